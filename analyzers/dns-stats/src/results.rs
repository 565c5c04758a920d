//! The results: message counts, query types and response codes, the top
//! names, and the latency figures.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A name and its queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCount {
    /// The name, lower-cased.
    pub name: String,
    /// Queries for it.
    pub queries: u64,
}

/// Latency figures, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Matched responses.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean (floor).
    pub mean: u64,
    /// Largest.
    pub max: u64,
    /// Median of the sample ring (nearest rank).
    pub p50: u64,
    /// 90th percentile of the sample ring.
    pub p90: u64,
    /// 99th percentile of the sample ring.
    pub p99: u64,
    /// Latencies in the sample ring.
    pub samples: u64,
}

/// The results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// Packets seen.
    pub packets: u64,
    /// Packets holding DNS messages.
    pub dns_packets: u64,
    /// Packets holding none.
    pub other_packets: u64,
    /// Well-formed queries.
    pub queries: u64,
    /// Well-formed responses.
    pub responses: u64,
    /// Malformed messages.
    pub malformed: u64,
    /// Messages cut by the capture before their first question ended.
    pub truncated: u64,
    /// Queries by type.
    pub qtypes: BTreeMap<String, u64>,
    /// Responses by code.
    pub rcodes: BTreeMap<String, u64>,
    /// The most queried names.
    pub top_names: Vec<NameCount>,
    /// Names counted now.
    pub names: u64,
    /// Queries for names beyond `max_names`.
    pub untracked_name_queries: u64,
    /// Query→response latency.
    pub latency_us: Latency,
    /// Queries awaiting a response, within the timeout.
    pub pending: u64,
    /// Queries that got no response within the timeout.
    pub unanswered: u64,
    /// Responses with no query awaiting them.
    pub unmatched_responses: u64,
    /// Queries beyond `max_pending`.
    pub untracked_queries: u64,
    /// Queries repeating a pending one.
    pub duplicate_queries: u64,
}
