//! The network topology: routers are vertices, links are directed edges.
//!
//! One direction of a physical line is identified by the monitor that taps
//! it and that monitor's link id, and described by the routers it goes from
//! and to: the reference link table (figure 5). The same table is imported from a file,
//! stored in KV (`tm_topology`, key `current`, as a [`TopologyRecord`](bus_schema::TopologyRecord)) so
//! every manager sees one topology, and held here as a petgraph [`DiGraph`](petgraph::graph::DiGraph)
//! for the queries management apps and `tmctl` ask.
//!
//! # File formats
//!
//! CSV, with this header line and one row per direction; lines starting with
//! `#` are comments, blank lines are skipped, fields are trimmed:
//!
//! ```text
//! monitor_address,link_id,from_router,to_router
//! 10.9.0.1,0,10.0.1.1,10.0.2.1
//! ,,10.0.5.1,10.0.6.1
//! ```
//!
//! TOML, one `[[link]]` table per row with the same four keys:
//!
//! ```toml
//! [[link]]
//! monitor_address = "10.9.0.1"
//! link_id = 0
//! from_router = "10.0.1.1"
//! to_router = "10.0.2.1"
//!
//! [[link]]            # a line nobody taps
//! from_router = "10.0.5.1"
//! to_router = "10.0.6.1"
//! ```
//!
//! # Rules
//!
//! * Router and monitor addresses are IPv4 or IPv6 addresses; a router is
//!   identified by its address. The link id is an integer from 0 to 2³²−1.
//! * A row without monitor address and link id (empty CSV fields, or a
//!   `[[link]]` without those keys) declares a direction that exists but that
//!   no monitor taps, so that lines without any monitor can be described. In
//!   a [`TopologyRow`](bus_schema::TopologyRow) it has an empty `monitor_address` and `link_id` 0.
//! * Physical lines are bidirectional: when only one direction of a line
//!   appears in the table, the other direction exists too, unmonitored.
//! * Each (monitor address, link id) pair describes one direction only; a
//!   row that repeats a pair is refused. Several rows may describe the same
//!   direction (two monitors tapping it): it is one edge seen by both.
//! * A row whose two routers are the same (a self-loop) is refused.
//! * A table without any row is refused.
//!
//! Every refusal names the place: the line of a CSV file; the entry and line
//! of a TOML file (`line 14, link[3].to_router`, entries counted from 0); the
//! row of a record (`rows[3].to_router`), with the field and the value.
//!
//! # Paths
//!
//! [`Topology::shortest_path`] counts hops. Among equally short paths it
//! takes the one whose sequence of router addresses is smallest, comparing
//! address by address in numeric order (IPv4 before IPv6), so the answer
//! depends on the topology only, never on the order of the rows.
//! [`Topology::flow_path`] assumes a flow follows that path.
//!
//! # Modules
//!
//! * `graph`: [`Topology`] as a directed graph and its queries.
//! * `import`: the CSV and TOML files.
//! * `store`: the [`TopologyRecord`](bus_schema::TopologyRecord) and its
//!   KV key.
//! * `render`: the figure-5 table and Graphviz.
//! * `error`: what a refusal names.

mod error;
mod graph;
mod import;
mod render;
mod store;

pub use error::{Invalid, Location, Problem, TopologyError};
pub use graph::{Link, Neighbours, Path, QueryError, Tap, Topology};
pub use import::CSV_HEADER;
pub use store::{KvError, Stored, load, open_bucket, save};

/// Shared by the tests of every part: the reference link table (figure 5).
#[cfg(test)]
mod fixtures {
    use std::net::IpAddr;

    use super::{Link, Tap, Topology};

    pub(super) const FIGURE5_TOML: &str = include_str!("../../../examples/topology/figure5.toml");
    pub(super) const FIGURE5_CSV: &str = include_str!("../../../examples/topology/figure5.csv");

    // The reference network: a ring R1 - R2 - R3 - R4 - R1.
    //
    //   R1 --L12-- R2
    //   |           |
    //  L14         L23
    //   |           |
    //   R4 --L34-- R3
    pub(super) const R1: &str = "10.0.1.1";
    pub(super) const R2: &str = "10.0.2.1";
    pub(super) const R3: &str = "10.0.3.1";
    pub(super) const R4: &str = "10.0.4.1";
    // M1 taps both directions of L12, M2 both of L23, M3 R3→R4 and R1→R4.
    pub(super) const M1: &str = "10.9.0.1";
    pub(super) const M2: &str = "10.9.0.2";
    pub(super) const M3: &str = "10.9.0.3";

    pub(super) const HEADER: &str = "monitor_address,link_id,from_router,to_router\n";

    pub(super) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub(super) fn tap(monitor: &str, link_id: u32) -> Tap {
        Tap {
            monitor: ip(monitor),
            link_id,
        }
    }

    pub(super) fn figure5() -> Topology {
        Topology::parse_toml(FIGURE5_TOML).unwrap()
    }

    /// A link as (from, to, taps) for literal expectations.
    pub(super) fn hop(link: &Link) -> (IpAddr, IpAddr, Vec<Tap>) {
        (link.from, link.to, link.seen_by.clone())
    }

    pub(super) fn expect_hop(
        from: &str,
        to: &str,
        taps: &[(&str, u32)],
    ) -> (IpAddr, IpAddr, Vec<Tap>) {
        (
            ip(from),
            ip(to),
            taps.iter().map(|&(m, l)| tap(m, l)).collect(),
        )
    }

    pub(super) fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }
}
