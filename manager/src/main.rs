//! `tm-manager`: runs management apps that drive monitors and combine their
//! results with the topology. Not implemented yet: see issue #5 and
//! README.md "Status".

use clap::Parser;

/// Runs WebAssembly management apps that drive monitors over NATS and
/// analyse their results against the network topology.
///
/// Not implemented yet (issue #5): this binary only prints its status.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!(
        "tm-manager is not implemented yet (protocol v{}); see README.md \"Status\"",
        bus_schema::PROTOCOL_VERSION
    )
}
