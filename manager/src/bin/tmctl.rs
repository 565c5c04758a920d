//! `tmctl`: the operator's command line. Talks to the system only over NATS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, object_store};
use bus_schema::MonitorRecord;
use bus_schema::store::{self, BlobKind, BlobMeta};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use manager::topology::{self, Topology, TopologyError};

/// Operates a tm system over NATS: analyzer modules in the object store,
/// the network topology, the monitors that are up.
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
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

#[derive(Subcommand, Debug)]
enum AnalyzerCommand {
    /// Stores a WebAssembly module; prints its name and SHA-256 digest.
    Put {
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
    },
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
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn fail(code: u8, error: impl Into<anyhow::Error>) -> Failure {
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

const BAD_INPUT: u8 = 2;
const NOT_FOUND: u8 = 3;

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
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(cli.nats.as_str())
        .await
        .with_context(|| format!("cannot reach NATS at {}", cli.nats))?;
    let js = jetstream::new(client);
    match cli.command {
        Command::Analyzer { command } => analyzer(&js, command, cli.json).await,
        Command::Topology { command } => topology_cmd(&js, command, cli.json).await,
        Command::Monitors => monitors(&js, cli.json).await,
    }
}

async fn blobs(js: &jetstream::Context) -> anyhow::Result<object_store::ObjectStore> {
    if let Ok(o) = js.get_object_store(store::BLOBS_BUCKET).await {
        return Ok(o);
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: store::BLOBS_BUCKET.into(),
            description: Some("analyzer and mgmt-app modules".into()),
            ..Default::default()
        })
        .await;
    match created {
        Ok(o) => Ok(o),
        // Another client may have created it in between.
        Err(e) => js
            .get_object_store(store::BLOBS_BUCKET)
            .await
            .map_err(|_| e)
            .with_context(|| format!("cannot open object store {}", store::BLOBS_BUCKET)),
    }
}

async fn analyzer(
    js: &jetstream::Context,
    command: AnalyzerCommand,
    json: bool,
) -> Result<(), Failure> {
    let objects = blobs(js).await?;
    match command {
        AnalyzerCommand::Put {
            file,
            name,
            version,
            description,
        } => {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("cannot read {}", file.display()))
                .map_err(|e| fail(BAD_INPUT, e))?;
            if bytes.len() < 8 || &bytes[..4] != b"\0asm" || bytes[4..8] != [1, 0, 0, 0] {
                return Err(fail(
                    BAD_INPUT,
                    anyhow!(
                        "{}: not a WebAssembly module (no \\0asm version 1 header)",
                        file.display()
                    ),
                ));
            }
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .ok_or_else(|| fail(BAD_INPUT, anyhow!("{}: no file name", file.display())))?,
            };
            bus_schema::validate_token("name", &name).map_err(|e| fail(BAD_INPUT, e))?;
            let meta = BlobMeta {
                kind: BlobKind::Analyzer,
                version,
                sha256: wasm_host::sha256_hex(&bytes),
                abi_version: 1,
                description,
            };
            objects
                .put(
                    object_store::ObjectMetadata {
                        name: name.clone(),
                        description: Some(meta.description.clone()),
                        metadata: meta.to_map(),
                        ..Default::default()
                    },
                    &mut &bytes[..],
                )
                .await
                .with_context(|| format!("cannot store {name}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "sha256": meta.sha256, "size": bytes.len()})
                );
            } else {
                println!("{name} {} ({} bytes)", meta.sha256, bytes.len());
            }
            Ok(())
        }
        AnalyzerCommand::List => {
            let mut list = objects.list().await.context("cannot list modules")?;
            let mut rows = Vec::new();
            while let Some(info) = list.next().await {
                let info = info.context("cannot list modules")?;
                if info.deleted {
                    continue;
                }
                let meta = BlobMeta::from_map(&info.metadata).ok();
                rows.push((info.name.clone(), info.size, meta));
            }
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(name, size, meta)| {
                        serde_json::json!({
                            "name": name, "size": size,
                            "kind": meta.as_ref().map(|m| m.kind.as_str()),
                            "version": meta.as_ref().map(|m| m.version.clone()),
                            "sha256": meta.as_ref().map(|m| m.sha256.clone()),
                            "description": meta.as_ref().map(|m| m.description.clone()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<20} {:<9} {:<9} {:>9}  {:<64}  DESCRIPTION",
                    "NAME", "KIND", "VERSION", "SIZE", "SHA256"
                );
                for (name, size, meta) in &rows {
                    match meta {
                        Some(m) => println!(
                            "{name:<20} {:<9} {:<9} {size:>9}  {:<64}  {}",
                            m.kind.as_str(),
                            m.version,
                            m.sha256,
                            m.description
                        ),
                        None => println!(
                            "{name:<20} {:<9} {:<9} {size:>9}  {:<64}  (no tm metadata)",
                            "?", "?", "?"
                        ),
                    }
                }
            }
            Ok(())
        }
        AnalyzerCommand::Rm { name } => {
            // A removed object still has an info record, marked deleted.
            if objects.info(&name).await.map_or(true, |i| i.deleted) {
                return Err(fail(
                    NOT_FOUND,
                    anyhow!("no module named {name:?} in {}", store::BLOBS_BUCKET),
                ));
            }
            objects
                .delete(&name)
                .await
                .with_context(|| format!("cannot remove {name}"))?;
            if json {
                println!("{}", serde_json::json!({"removed": name}));
            } else {
                println!("removed {name}");
            }
            Ok(())
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn topology_cmd(
    js: &jetstream::Context,
    command: TopologyCommand,
    json: bool,
) -> Result<(), Failure> {
    let kv = topology::open_bucket(js, 1)
        .await
        .map_err(|e| anyhow!(e))
        .context("cannot open the topology bucket")?;
    match command {
        TopologyCommand::Import { file, replace } => {
            let topo = Topology::from_path(&file).map_err(|e| match e {
                TopologyError::Read { .. } => fail(BAD_INPUT, e),
                other => fail(BAD_INPUT, other),
            })?;
            let current = topology::load(&kv).await.map_err(|e| anyhow!(e))?;
            let expected = match (&current, replace) {
                (Some(stored), true) => Some(stored.revision),
                (Some(stored), false) => {
                    return Err(fail(
                        1,
                        anyhow!(
                            "a topology is already stored (revision {}, imported by {}); add --replace to replace it",
                            stored.revision,
                            stored.record.imported_by
                        ),
                    ));
                }
                (None, _) => None,
            };
            let by = format!("tmctl@{}", hostname());
            let record = topo.to_record(&by, now_ms());
            let revision = topology::save(&kv, &record, expected)
                .await
                .map_err(|e| anyhow!(e))
                .context("cannot store the topology")?;
            let links = topo.links().len();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"revision": revision, "rows": record.rows.len(), "routers": topo.routers().len(), "links": links})
                );
            } else {
                println!(
                    "imported {} rows: {} routers, {} directed links ({} unmonitored); revision {revision}",
                    record.rows.len(),
                    topo.routers().len(),
                    links,
                    topo.unmonitored_links().len()
                );
            }
            Ok(())
        }
        TopologyCommand::Show { dot } => {
            let Some(stored) = topology::load(&kv).await.map_err(|e| anyhow!(e))? else {
                return Err(fail(
                    NOT_FOUND,
                    anyhow!("no topology stored; import one with `tmctl topology import FILE`"),
                ));
            };
            if dot {
                print!("{}", stored.topology.dot());
            } else if json {
                let rows: Vec<_> = stored
                    .record
                    .rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "monitor_address": r.monitor_address, "link_id": r.link_id,
                            "from_router": r.from_router, "to_router": r.to_router,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"revision": stored.revision, "imported_by": stored.record.imported_by,
                        "imported_unix_ms": stored.record.imported_unix_ms, "rows": rows})
                );
            } else {
                print!("{}", stored.topology.table());
            }
            Ok(())
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

async fn monitors(js: &jetstream::Context, json: bool) -> Result<(), Failure> {
    let mut records: Vec<MonitorRecord> = Vec::new();
    if let Ok(kv) = js.get_key_value(store::MONITORS_BUCKET).await {
        let mut keys = kv.keys().await.context("cannot list monitors")?;
        while let Some(key) = keys.next().await {
            let key = key.context("cannot list monitors")?;
            if let Some(bytes) = kv.get(&key).await.context("cannot read a monitor record")? {
                match bus_schema::decode::<MonitorRecord>(&bytes) {
                    Ok(r) => records.push(r),
                    Err(e) => eprintln!("tmctl: monitor record {key:?} is unreadable: {e}"),
                }
            }
        }
    }
    records.sort_by(|a, b| a.monitor.cmp(&b.monitor));
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
