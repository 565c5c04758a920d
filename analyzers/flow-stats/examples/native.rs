//! flow-stats compiled natively, for the native-vs-WebAssembly figure of
//! `cargo bench -p monitor --bench analyzers`, which writes the batches and
//! runs this with:
//!
//!     cargo run --release --example native -p flow-stats -- BATCHES RUNS
//!
//! BATCHES holds the very batches the monitor gives the guest: repeated
//! `[count: u32 LE][len: u32 LE][len bytes of ABI v1 records]`. Each run
//! feeds all of them to a fresh analyzer through the same `Records` walk
//! as the WebAssembly exports, copying each batch into the analyzer's own
//! buffer first, as the host copies it into guest memory. Prints `best_ns=… packets=… flows=…`.

use std::time::Instant;

use flow_stats::{FlowStats, Params};
use tm_sdk::Analyzer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        eprintln!("usage: native BATCHES [RUNS]");
        std::process::exit(2);
    }
    let data = std::fs::read(&args[1]).unwrap_or_else(|e| {
        eprintln!("{}: {}", args[1], e);
        std::process::exit(1)
    });
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut batches = Vec::new();
    let mut at = 0;
    while at + 8 <= data.len() {
        let count = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let len =
            u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]) as usize;
        batches.push((count, &data[at + 8..at + 8 + len]));
        at += 8 + len;
    }
    let mut best = u128::MAX;
    let mut last = None;
    for _ in 0..runs {
        let mut a = FlowStats::init(Params::default()).expect("default params");
        // Each batch is first copied into the analyzer's own buffer, as the
        // host copies it into the guest's memory before each call.
        let mut own = vec![0u8; batches.iter().map(|b| b.1.len()).max().unwrap_or(0)];
        let started = Instant::now();
        for (count, buf) in &batches {
            let own = &mut own[..buf.len()];
            own.copy_from_slice(buf);
            tm_sdk::feed(&mut a, own, *count);
        }
        best = best.min(started.elapsed().as_nanos());
        last = Some(a.results());
    }
    let r = last.expect("at least one run");
    println!(
        "best_ns={} packets={} flows={}",
        best, r.packets, r.active_flows
    );
}
