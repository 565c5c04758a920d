//! `tm-monitor`: see `tm-monitor --help`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use monitor::config::Config;
use monitor::service::Monitor;

/// Taps links (live capture or pcap replay) and runs WebAssembly analyzers
/// that managers load, configure, collect from and unload over NATS.
///
/// Links and limits come from the TOML file (see monitor/src/config.rs or
/// README.md for every field); the flags below override the file.
///
/// Commands it answers: `tm.v1.mon.<id>.{load,unload,collect,configure,status}`
/// (also discoverable with the NATS service API as `tm-monitor`). It keeps a
/// liveness record in the KV bucket tm_monitors and publishes results and
/// events to the TM_RESULTS and TM_EVENTS streams. SIGTERM or Ctrl-C unloads
/// every analyzer and publishes its final results before exiting.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The TOML configuration file.
    #[arg(short, long, env = "TM_MONITOR_CONFIG")]
    config: PathBuf,
    /// Monitor id (default: from the file, else its address with '.' as '-').
    #[arg(long)]
    id: Option<String>,
    /// The monitor's address, as in the topology's first column.
    #[arg(long)]
    address: Option<String>,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// NATS identity: an nkey seed file (`tmctl auth init` writes one per
    /// identity) or a JWT `.creds` file.
    #[arg(long, env = "NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`) here, e.g. `127.0.0.1:9464`
    /// (overrides `metrics_listen` in the file).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Validate the configuration and exit: 0 if valid, 1 naming the bad field.
    #[arg(long)]
    check_config: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `monitor=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

fn load_config(args: &Args) -> Result<Config> {
    let mut config = Config::load(&args.config)?;
    if let Some(id) = &args.id {
        config.id = Some(id.clone());
    }
    if let Some(a) = &args.address {
        config.address = a.clone();
    }
    if let Some(u) = &args.nats_url {
        config.nats_url = u.clone();
    }
    if let Some(c) = &args.nats_creds {
        config.nats_credentials = Some(c.clone());
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    config
        .validate()
        .with_context(|| format!("config {}", args.config.display()))?;
    Ok(config)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let config = load_config(&args)?;
    if args.check_config {
        println!(
            "config {} is valid: monitor {} with {} link(s)",
            args.config.display(),
            config.monitor_id(),
            config.links.len()
        );
        return Ok(());
    }
    let addrs = bus_schema::nats::server_addrs(&config.nats_url)
        .map_err(|e| anyhow::anyhow!("nats_url{e}"))?;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("tm-monitor {}", config.monitor_id()))
        .retry_on_initial_connect();
    if let Some(creds) = &config.nats_credentials {
        options = bus_schema::nats::with_credentials(options, creds).await?;
    }
    let client = options
        .connect(addrs)
        .await
        .context("cannot connect to NATS")?;
    let js = match &config.jetstream_domain {
        Some(domain) => async_nats::jetstream::with_domain(client.clone(), domain),
        None => async_nats::jetstream::new(client.clone()),
    };
    let metrics_listen = config.metrics_listen;
    let stop_timeout = std::time::Duration::from_millis(config.stop_timeout_ms);
    let (monitor, outbox) = Monitor::start(config, js.clone()).await?;
    let _metrics = match metrics_listen {
        Some(addr) => {
            let stats = client.statistics();
            let connects = wasm_host::metrics::NatsConnects::new(move || {
                stats.connects.load(std::sync::atomic::Ordering::Relaxed)
            });
            let registry = std::sync::Arc::new(monitor::metrics::registry(&monitor, connects));
            let (bound, task) = wasm_host::metrics::serve(addr, registry)
                .await
                .with_context(|| format!("metrics_listen = {addr}: cannot listen"))?;
            tracing::info!(%bound, "metrics at http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    let (stop_publisher, stop) = tokio::sync::watch::channel(false);
    let mut publisher = tokio::spawn(monitor::outbox::publisher(js, outbox.clone(), stop));
    let heartbeat = tokio::spawn(monitor.clone().heartbeat());
    let watcher = tokio::spawn(monitor.clone().watch_links());
    match monitor.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deployments = n, "recovered deployments from snapshots"),
        Err(e) => tracing::error!(error = %e, "cannot read snapshots; starting without them"),
    }
    let server = tokio::spawn(monitor.clone().serve(client.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: unloading deployments"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: unloading deployments"),
        r = server => { r??; }
    }
    // A stop has a deadline, whether or not the bus is there: what is not
    // delivered by then goes to the spool (or is named in the log as lost).
    let deadline = tokio::time::Instant::now() + stop_timeout;
    heartbeat.abort();
    watcher.abort();
    if tokio::time::timeout_at(deadline, monitor.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("unloading at the stop ran out of time");
    }
    let _ = stop_publisher.send(true);
    if tokio::time::timeout_at(deadline, &mut publisher)
        .await
        .is_err()
    {
        // Stopped, so that nothing it still sends is also spooled.
        publisher.abort();
        tracing::warn!(
            timeout_ms = stop_timeout.as_millis() as u64,
            "the bus did not take everything before stop_timeout_ms"
        );
    }
    let left = outbox.spool_rest();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), monitor.leave()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), client.flush()).await;
    tracing::info!(undelivered = left, "stopped");
    Ok(())
}
