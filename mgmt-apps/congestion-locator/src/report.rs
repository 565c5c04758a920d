//! What the app publishes each round: the `congestion` report and the
//! per-link figures, affected paths, verdicts and suspect it is made of.

use serde::Serialize;

/// Which side of a tap a hotspot's losses happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The tap missed the originals (gaps): lost before it.
    BeforeTap,
    /// The tap saw the originals and their resends: lost after it.
    AfterTap,
}

/// Why a link is blamed, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// Its tap missed the originals that upstream taps (if any) saw.
    MissedOriginals,
    /// It is the next link after the last tap that saw the originals.
    AfterLastTap,
    /// Its tap saw the originals; the loss is after it, nothing says where.
    AfterTap,
}

/// How the suspect was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// From flagged connections' paths.
    Paths,
    /// From the per-link figures and the topology alone.
    Links,
}

/// What one tap saw on one directed link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkFigure {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// The tap's monitor address.
    pub monitor_address: String,
    /// The tap's link id.
    pub link_id: u32,
    /// TCP packets.
    pub packets: u64,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Segments this tap saw twice (lost after it).
    pub retransmissions: u64,
    /// Segments filling a gap (lost before it, or reordered).
    pub out_of_order: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
    /// out_of_order / data_packets.
    pub gap_rate: f64,
    /// retrans_rate + gap_rate.
    pub loss_rate: f64,
    /// At least `min_data_packets` data segments.
    pub considered: bool,
    /// For a hotspot, which side of the tap the losses were.
    pub lost: Option<Side>,
}

/// A directed link by its routers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LinkRef {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
}

/// One link of an affected path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathLink {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// Whether any monitor taps it.
    pub monitored: bool,
    /// The considered tap that speaks for it.
    pub monitor_address: Option<String>,
    /// Its link id.
    pub link_id: Option<u32>,
    /// Its data segments.
    pub data_packets: Option<u64>,
    /// Its retransmission rate.
    pub retrans_rate: Option<f64>,
    /// Its gap rate.
    pub gap_rate: Option<f64>,
    /// For a hotspot, which side of the tap the losses were.
    pub lost: Option<Side>,
}

/// The link a path points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// Why.
    pub evidence: Evidence,
    /// Unmonitored (or unconsidered) links the figures cannot tell from it.
    pub also_possible: Vec<LinkRef>,
}

/// The path of flagged connections between two routers, one direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AffectedPath {
    /// Source router.
    pub from_router: String,
    /// Destination router.
    pub to_router: String,
    /// Distinct flagged connections between the two routers.
    pub connections: u64,
    /// Its links, first to last.
    pub links: Vec<PathLink>,
    /// The link it points at.
    pub verdict: Option<Verdict>,
    /// Why (or why none).
    pub reason: String,
}

/// The most likely congested link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suspect {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// The considered tap on it, if any.
    pub monitor_address: Option<String>,
    /// Its link id.
    pub link_id: Option<u32>,
    /// Its data segments.
    pub data_packets: Option<u64>,
    /// Its retransmission rate.
    pub retrans_rate: Option<f64>,
    /// Its gap rate.
    pub gap_rate: Option<f64>,
    /// Why it is blamed.
    pub evidence: Evidence,
    /// How it was found.
    pub method: Method,
    /// Flagged connections whose paths point at it.
    pub connections: u64,
    /// Affected paths that point at it.
    pub paths: u32,
    /// Links the figures cannot tell from it.
    pub also_possible: Vec<LinkRef>,
}

/// What the app publishes each round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The tcp-perf deployment.
    pub deployment: String,
    /// Collect round (1, 2, …); the final report repeats the last + 1.
    pub round: u32,
    /// Topology revision the report was laid on.
    pub topology_revision: u64,
    /// The hotspot threshold on loss_rate.
    pub retrans_threshold: f64,
    /// Data segments a tap needs to count.
    pub min_data_packets: u64,
    /// Every tap's figures, sorted by (from, to, monitor, link).
    pub links: Vec<LinkFigure>,
    /// Considered taps whose loss rate passes the threshold, worst first.
    pub hotspots: Vec<LinkFigure>,
    /// The most likely congested link.
    pub suspect: Option<Suspect>,
    /// Why that suspect, or why none.
    pub reason: String,
    /// Paths of flagged connections, sorted by (from, to).
    pub paths: Vec<AffectedPath>,
    /// Flagged connections with an end no prefix covers.
    pub unmapped_connections: u64,
    /// Flagged connections whose ends sit behind one router.
    pub local_connections: u64,
    /// Links nobody taps.
    pub unmonitored: Vec<LinkRef>,
    /// Taps whose results came in but that the topology does not know
    /// (`monitor_address:link_id`).
    pub unknown_taps: Vec<String>,
    /// Monitors that did not answer (id: reason).
    pub missing: Vec<String>,
}
