//! `tm-manager`: runs management apps (WebAssembly) that drive monitors over
//! NATS and combine their results with the topology.

use std::path::PathBuf;
use std::time::Duration;
use wasm_host::trust::TrustedKeys;

use anyhow::Context;
use bus_schema::{AppSource, BlobRef, Value};
use clap::Parser;
use manager::apps::{AppLimits, Apps};
use manager::archive::Archive;
use manager::control::Control;

/// Runs WebAssembly management apps that drive monitors over NATS and
/// analyse their results against the network topology.
///
/// Apps are loaded at runtime with `tmctl apps load` (from a file or the
/// object store), or at start with `--app`. Commands arrive on
/// `tm.v1.mgr.<id>.apps.load|unload|list`; the manager is also a NATS
/// service (`nats micro ls` finds it).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Manager id: owner of the deployments its apps create.
    #[arg(long, env = "TM_MANAGER_ID", default_value = "mgr-1")]
    id: String,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "TM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// NATS identity: an nkey seed file (`tmctl auth init` writes one per
    /// identity) or a JWT `.creds` file.
    #[arg(long, env = "NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// Replicas of the streams and buckets it creates (3 on a cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Where collected results are archived: a directory, `file://` or
    /// `s3://bucket/prefix` URL. None: apps cannot archive.
    #[arg(long, env = "TM_ARCHIVE")]
    archive: Option<String>,
    /// Linear-memory cap per app, MiB (1 to 4096).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    app_memory_mb: u64,
    /// A directory whose `.wasm` files `apps.load` requests may name
    /// (repeatable). Without one, the manager reads no file a request over
    /// the bus names: apps come from the object store (or `--app`).
    #[arg(long = "apps-dir", env = "TM_APPS_DIR", value_name = "DIR")]
    apps_dirs: Vec<PathBuf>,
    /// Deadline of one app call's computation (waiting on the bus
    /// excluded), ms (1 to 600000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    app_call_timeout_ms: u64,
    /// Load an app at start: `NAME=PATH.wasm` or `NAME=blob:BLOBNAME`
    /// (repeatable). Params with `--app-params NAME=JSON`.
    #[arg(long = "app", value_name = "NAME=SOURCE")]
    apps: Vec<String>,
    /// Params of an app given with `--app`: `NAME=JSON`.
    #[arg(long = "app-params", value_name = "NAME=JSON")]
    app_params: Vec<String>,
    /// How often the manager refreshes its liveness record, ms (at most
    /// 5000). Three missed periods and other managers may adopt its
    /// deployments.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(50..=5000))]
    heartbeat_ms: u64,
    /// Serve Prometheus metrics (`GET /metrics`) here, e.g. `127.0.0.1:9465`.
    #[arg(long, env = "TM_METRICS_LISTEN", value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// File of trusted ed25519 public keys (64 hex digits per line, `#`
    /// comments): with any key given, apps load from the object store only
    /// when signed by one of them (`tmctl apps put --sign-key`), and
    /// `apps.load` refuses file paths.
    #[arg(long, env = "TM_TRUSTED_KEYS", value_name = "FILE")]
    trusted_keys: Option<PathBuf>,
    /// A trusted public key, hex (repeatable; adds to --trusted-keys).
    #[arg(long = "trusted-key", value_name = "HEX")]
    trusted_key: Vec<String>,
    /// Check the flags (id, archive, apps given with --app) and exit: 0 if
    /// they are valid, 1 naming the bad one. Connects to nothing.
    #[arg(long)]
    check_config: bool,
    /// Log filter (tracing's env-filter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

fn split<'a>(flag: &str, text: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    text.split_once('=')
        .with_context(|| format!("{flag} {text:?}: expected NAME=VALUE"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    manager::log_to_stderr(Some(&args.log));
    bus_schema::validate_token("--id", &args.id)?;
    let mut startup = Vec::new();
    for spec in &args.apps {
        let (name, source) = split("--app", spec)?;
        let source = match source.strip_prefix("blob:") {
            Some(blob) => AppSource::Object(BlobRef {
                name: blob.to_owned(),
                sha256: String::new(),
            }),
            None => AppSource::File {
                path: source.to_owned(),
            },
        };
        let params = match args
            .app_params
            .iter()
            .map(|p| split("--app-params", p))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .find(|(n, _)| *n == name)
        {
            Some((_, json)) => {
                let v: serde_json::Value = serde_json::from_str(json)
                    .with_context(|| format!("--app-params {name}: not JSON"))?;
                rmp_serde::from_slice::<Value>(&rmp_serde::to_vec_named(&v)?)?
            }
            None => Value::Nil,
        };
        startup.push((name.to_owned(), source, params));
    }
    let limits = AppLimits {
        memory_bytes: usize::try_from(args.app_memory_mb)? << 20,
        call_timeout: Duration::from_millis(args.app_call_timeout_ms),
        apps_dirs: args.apps_dirs.clone(),
        ..AppLimits::default()
    };
    limits.validate()?;
    let archive = args.archive.as_deref().map(Archive::open).transpose()?;
    for (name, source, _) in &startup {
        bus_schema::validate_token("--app NAME", name)?;
        if let AppSource::File { path } = source
            && !std::path::Path::new(path).is_file()
        {
            anyhow::bail!("--app {name}={path}: no such file");
        }
    }
    let mut trusted = TrustedKeys::from_hex("--trusted-key", &args.trusted_key)?;
    if let Some(file) = &args.trusted_keys {
        trusted = trusted
            .with(TrustedKeys::from_file(file).map_err(|e| anyhow::anyhow!("--trusted-keys {e}"))?);
    }
    if args.check_config {
        println!(
            "flags are valid: manager {} with {} app(s) at start, archive {}, {} trusted key(s)",
            args.id,
            startup.len(),
            archive.as_ref().map_or("none", |a| a.location()),
            trusted.len()
        );
        return Ok(());
    }
    let addrs = bus_schema::nats::server_addrs(&args.nats)
        .map_err(|e| anyhow::anyhow!("--nats {}: {e}", args.nats))?;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("tm-manager {}", args.id))
        .retry_on_initial_connect();
    if let Some(creds) = &args.nats_creds {
        options = bus_schema::nats::with_credentials(options, creds).await?;
    }
    let client = options
        .connect(addrs)
        .await
        .context("cannot connect to NATS")?;
    let control = Control::connect_with(
        client.clone(),
        &args.id,
        args.replicas,
        args.nats_creds.is_some(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(m) = control
        .managers()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get(&args.id)
        .filter(|m| m.is_up(manager::control::now_ms()))
    {
        anyhow::bail!(
            "manager id {:?} is already up (heartbeat {} ms ago); pick another --id",
            args.id,
            manager::control::now_ms().saturating_sub(m.heartbeat_unix_ms)
        );
    }
    let sandbox = wasm_host::Sandbox::new(&wasm_host::SandboxConfig::for_call_timeout(
        limits.call_timeout,
    ))?;
    let apps = Apps::new(control.clone(), sandbox, archive, limits, trusted.clone()).await?;
    let _metrics = match args.metrics_listen {
        Some(addr) => {
            let stats = client.statistics();
            let connects = wasm_host::metrics::NatsConnects::new(move || {
                stats.connects.load(std::sync::atomic::Ordering::Relaxed)
            });
            let registry = std::sync::Arc::new(manager::metrics::registry(&apps, connects));
            let (bound, task) = wasm_host::metrics::serve(addr, registry)
                .await
                .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
            tracing::info!(%bound, "metrics at http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    if trusted.enforced() {
        tracing::info!(
            keys = trusted.len(),
            "only apps signed by a trusted key load from the object store"
        );
    } else {
        tracing::warn!("no trusted keys: app signatures are not checked (digests still are)");
    }
    let heartbeat = tokio::spawn(manager::service::heartbeat(
        apps.clone(),
        control.clone(),
        Duration::from_millis(args.heartbeat_ms),
    ));
    // Monitors that stop answering are dropped within two probes; a
    // collect round reads the records from a watched copy.
    let liveness = tokio::spawn(control.clone().watch_monitors());
    let server = tokio::spawn(manager::service::serve(apps.clone(), client.clone()));
    for (name, source, params) in startup {
        apps.load_local(&name, source, params)
            .await
            .map_err(|e| anyhow::anyhow!("--app {name}: {e}"))?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: unloading apps"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: unloading apps"),
        r = server => { r??; }
    }
    heartbeat.abort();
    liveness.abort();
    apps.unload_all().await;
    control.sign_off().await;
    client.flush().await.ok();
    tracing::info!("stopped");
    Ok(())
}
