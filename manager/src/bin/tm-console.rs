//! `tm-console`: the live web view of the network, its monitors and their
//! results (see `manager::console`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bus_schema::Role;
use clap::Parser;
use manager::console::{self, Identity, Refusals};

/// A live web view of the network: the topology map with the load on
/// every tapped direction, each link's page (rates over time, top flows,
/// protocol mix, capture drops), monitors, deployments, apps and the event
/// feed — pushed to the browser as the bus changes.
///
/// It is one more client of the bus, acting with its own NATS identity:
/// with an operator's credentials (`--nats-creds operator-NAME.nk`) the
/// page can deploy, configure and unload analyzers and load and unload
/// apps, as NAME; with a viewer's (`tmctl auth init --viewer NAME`) it only
/// looks (NATS refuses every action, and the page shows the refusal). Without credentials (a bus
/// without identities) it acts as `--as` (default `console`).
///
/// Everything the page loads is embedded in this binary: it works offline.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "TM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// NATS identity: an nkey seed file (`tmctl auth init`) or a JWT
    /// `.creds` file.
    #[arg(long, env = "NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// Identity actions are sent as (owner of what the page deploys).
    /// Default: the operator of `--nats-creds`, else `console`.
    #[arg(long = "as", env = "TM_CONSOLE_AS")]
    identity: Option<String>,
    /// Where the page is served (port 0: any free port, printed).
    #[arg(long, env = "TM_CONSOLE_LISTEN", default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// Check the flags and the credentials file, print what would run,
    /// and exit without connecting.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    manager::log_to_stderr(None);
    let args = Args::parse();
    let seed = args
        .nats_creds
        .as_deref()
        .and_then(bus_schema::auth::identity_of_seed_file);
    let id = match (&args.identity, &seed) {
        (Some(given), Some((Role::Operator, own))) if given != own => bail!(
            "--as {given}: the identity in --nats-creds is operator {own:?}, which may act only as {own:?}"
        ),
        (Some(given), _) => given.clone(),
        (None, Some((Role::Operator, own))) => own.clone(),
        (None, _) => "console".to_owned(),
    };
    bus_schema::validate_token("--as", &id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let identity = Identity {
        id,
        enforced: args.nats_creds.is_some(),
        read_only: seed.is_some_and(|(role, _)| matches!(role, Role::Viewer | Role::Subscriber)),
        refusals: Refusals::default(),
    };
    let addrs = bus_schema::nats::server_addrs(&args.nats)
        .map_err(|e| anyhow::anyhow!("--nats {}: {e}", args.nats))?;
    if args.check_config {
        if let Some(creds) = &args.nats_creds {
            bus_schema::nats::with_credentials(async_nats::ConnectOptions::new(), creds)
                .await
                .with_context(|| format!("--nats-creds {}", creds.display()))?;
        }
        println!(
            "flags are valid: console on {} acting as {}{}",
            args.listen,
            identity.id,
            if identity.read_only {
                " (read-only)"
            } else {
                ""
            }
        );
        return Ok(());
    }
    let refusals = identity.refusals.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name("tm-console")
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let refusals = refusals.clone();
            async move {
                if let async_nats::Event::ServerError(e) = &event {
                    refusals.record(&e.to_string());
                }
                tracing::info!(%event, "nats");
            }
        });
    if let Some(creds) = &args.nats_creds {
        options = bus_schema::nats::with_credentials(options, creds).await?;
    }
    let client = options
        .connect(addrs)
        .await
        .context("cannot connect to NATS")?;
    // It reads no stream or bucket whose settings differ from the
    // contract's (a missing one it waits for, unless identities are
    // enforced: then the admin made them all).
    bus_schema::nats::check_stores(
        &async_nats::jetstream::new(client.clone()),
        Role::Viewer,
        identity.enforced,
    )
    .await
    .context("a stream or bucket differs from the contract")?;
    console::serve(client, identity, args.listen, |addr| {
        // Scripts and tests read this line for the URL.
        println!("tm-console: http://{addr}/");
        tracing::info!(%addr, "console listening");
    })
    .await
}
