//! `tm-monitor`: taps links and runs WebAssembly analyzers on a manager's
//! request. Not implemented yet: see issue #3 and README.md "Status".

use clap::Parser;

/// Taps links (live capture or pcap replay) and runs WebAssembly analyzers
/// that managers load, configure, collect from and unload over NATS.
///
/// Not implemented yet (issue #3): this binary only prints its status.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!(
        "tm-monitor is not implemented yet (protocol v{}); see README.md \"Status\"",
        bus_schema::PROTOCOL_VERSION
    )
}
