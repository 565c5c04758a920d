//! `tm-export`: result windows out to the collectors operators already run
//! (see `manager::export`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use manager::export::{self, Config, Start};

/// Exports what monitors measure to the tools operators already run, as
/// an outside subscriber of the results stream: run it anywhere near the
/// collector.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        global = true,
        env = "TM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// NATS identity: an nkey seed file (a subscriber's, `tmctl auth init
    /// --subscriber NAME`, is enough) or a JWT `.creds` file.
    #[arg(long, global = true, env = "NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    #[command(subcommand)]
    format: Format,
}

#[derive(Subcommand, Debug)]
enum Format {
    /// IPFIX (RFC 7011) over UDP: every flow that a `flow-records`
    /// deployment saw end, to nfcapd, nfacctd, ntopng, a SIEM…
    ///
    /// Templates 256 (IPv4) and 257 (IPv6): source and destination
    /// address, ports, protocol, tcpControlBits, packetDeltaCount,
    /// octetDeltaCount, flowStartMilliseconds, flowEndMilliseconds,
    /// ingressInterface (the link id) and flowEndReason; one observation
    /// domain per monitor (FNV-1a of its id, logged). The exporter's place
    /// in the stream is a durable consumer: stopped (SIGINT, SIGTERM) it
    /// finishes the window in hand, and started again it goes on from the
    /// next one, so the collector gets each flow once. A collector that
    /// refuses (port unreachable) gets the window again every second.
    Ipfix {
        /// The collector, host:port (UDP).
        #[arg(long, value_name = "ADDR")]
        collector: String,
        /// A deployment to export (repeatable; default: every flow-records
        /// deployment).
        #[arg(long = "deployment", value_name = "ID")]
        deployments: Vec<String>,
        /// The durable consumer's name: one per exporter.
        #[arg(long, default_value = "tm-export-ipfix")]
        durable: String,
        /// Where a new durable consumer starts: every window the stream
        /// holds, or those published from now on.
        #[arg(long, value_enum, default_value = "all")]
        from: Start,
        /// Seconds between two sendings of the templates.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        template_refresh_s: u64,
        /// Largest datagram, bytes (the path's MTU less IP and UDP headers).
        #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u64).range(200..=65000))]
        max_datagram: u64,
        /// Exit once every window in the stream is exported (a batch
        /// export) instead of waiting for more.
        #[arg(long)]
        until_caught_up: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    manager::log_to_stderr(None);
    let args = Args::parse();
    let Format::Ipfix {
        collector,
        deployments,
        durable,
        from,
        template_refresh_s,
        max_datagram,
        until_caught_up,
    } = args.format;
    let collector: SocketAddr = tokio::net::lookup_host(&collector)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("--collector {collector:?}: not a host:port that resolves"))?;
    for d in &deployments {
        bus_schema::validate_token("--deployment", d).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    bus_schema::validate_token("--durable", &durable).map_err(|e| anyhow::anyhow!("{e}"))?;
    let addrs = bus_schema::nats::server_addrs(&args.nats)
        .map_err(|e| anyhow::anyhow!("--nats {}: {e}", args.nats))?;
    let mut options = async_nats::ConnectOptions::new()
        .name("tm-export")
        .connection_timeout(Duration::from_secs(5));
    if let Some(creds) = &args.nats_creds {
        options = bus_schema::nats::with_credentials(options, creds)
            .await
            .with_context(|| format!("--nats-creds {}", creds.display()))?;
    }
    let client = options
        .connect(addrs)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats))?;
    let js = async_nats::jetstream::new(client);
    let cfg = Config {
        collector,
        deployments,
        durable,
        start: from,
        template_refresh: Duration::from_secs(template_refresh_s),
        max_datagram: max_datagram as usize,
        until_caught_up,
    };
    tracing::info!(collector = %cfg.collector, durable = %cfg.durable, "exporting IPFIX");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping after the window in hand");
    };
    let counters = export::run(&js, cfg, stop, |c, pending| {
        tracing::info!(
            windows = c.windows,
            records = c.records,
            datagrams = c.datagrams,
            pending,
            "exporting"
        );
    })
    .await?;
    let summary = serde_json::json!({
        "windows": counters.windows,
        "skipped_windows": counters.skipped_windows,
        "records": counters.records,
        "duplicates": counters.duplicates,
        "gaps": counters.gaps,
        "datagrams": counters.datagrams,
        "bytes": counters.bytes,
        "refused": counters.refused,
    });
    println!("{summary}");
    Ok(())
}
