//! The statistics tables and how one DNS message updates them: counters,
//! query types and response codes, names, pending queries and latencies;
//! their bounds, and the quantiles of the latency samples.

use serde::{Deserialize, Serialize};
use tm_sdk::Packet;

use crate::wire::parse;
use crate::DnsStats;

/// Counters kept as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets seen.
    pub packets: u64,
    /// Packets holding at least one DNS message (well-formed or not).
    pub dns_packets: u64,
    /// Packets without one.
    pub other_packets: u64,
    /// Well-formed queries.
    pub queries: u64,
    /// Well-formed responses.
    pub responses: u64,
    /// Malformed messages.
    pub malformed: u64,
    /// Messages the capture cut before their first question ended.
    pub truncated: u64,
    /// Queries for names not counted because `max_names` were tracked.
    pub untracked_name_queries: u64,
    /// Queries expired unanswered from the pending table.
    pub expired: u64,
    /// Responses without a query awaiting them (unsolicited or late).
    pub unmatched_responses: u64,
    /// Queries not awaited because `max_pending` were pending.
    pub untracked_queries: u64,
    /// Queries repeating one still pending (same key); the first one's
    /// time is kept.
    pub duplicate_queries: u64,
}

/// What matches a response to its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PendingKey {
    /// 4 or 6.
    pub version: u8,
    /// 6 or 17.
    pub proto: u8,
    /// Client address.
    pub client: [u8; 16],
    /// Server address.
    pub server: [u8; 16],
    /// Client port.
    pub client_port: u16,
    /// Server port.
    pub server_port: u16,
    /// Message id.
    pub id: u16,
}

/// Latency totals over every match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LatencyTotals {
    pub(crate) count: u64,
    pub(crate) total_ns: u64,
    pub(crate) min_ns: u64,
    pub(crate) max_ns: u64,
}

impl DnsStats {
    pub(crate) fn is_dns_port(&self, port: u16) -> bool {
        port == 53 || self.params.ports.contains(&port)
    }

    /// Counts one message of a packet.
    pub(crate) fn on_message(&mut self, p: &Packet, msg: &[u8], cut: bool) {
        let m = match parse(msg, cut) {
            Some(m) => m,
            None if cut => {
                self.c.truncated += 1;
                return;
            }
            None => {
                self.c.malformed += 1;
                return;
            }
        };
        let h = &p.header;
        if m.response {
            self.c.responses += 1;
            *self.rcodes.entry(m.rcode).or_insert(0) += 1;
            let key = PendingKey {
                version: h.ip_version,
                proto: h.ip_proto,
                client: h.dst_addr,
                server: h.src_addr,
                client_port: h.dst_port,
                server_port: h.src_port,
                id: m.id,
            };
            match self.pending.remove(&key) {
                Some(at) => {
                    let ns = h.ts_ns.saturating_sub(at);
                    if ns > self.timeout_ns() {
                        self.c.expired += 1;
                        self.c.unmatched_responses += 1;
                    } else {
                        self.record_latency(ns);
                    }
                }
                None => self.c.unmatched_responses += 1,
            }
            return;
        }
        self.c.queries += 1;
        if let Some((name, qtype)) = m.question {
            *self.qtypes.entry(qtype).or_insert(0) += 1;
            self.count_name(name);
        }
        let key = PendingKey {
            version: h.ip_version,
            proto: h.ip_proto,
            client: h.src_addr,
            server: h.dst_addr,
            client_port: h.src_port,
            server_port: h.dst_port,
            id: m.id,
        };
        if self.pending.contains_key(&key) {
            self.c.duplicate_queries += 1;
        } else if self.pending.len() >= self.params.max_pending as usize {
            self.c.untracked_queries += 1;
        } else {
            self.pending.insert(key, h.ts_ns);
        }
    }

    fn count_name(&mut self, name: String) {
        let full = self.names.len() >= self.params.max_names as usize;
        match self.names.get_mut(&name) {
            Some(n) => *n += 1,
            None if full => self.c.untracked_name_queries += 1,
            None => {
                self.names.insert(name, 1);
            }
        }
    }

    fn record_latency(&mut self, ns: u64) {
        let l = &mut self.latency;
        if l.count == 0 || ns < l.min_ns {
            l.min_ns = ns;
        }
        l.max_ns = l.max_ns.max(ns);
        l.count += 1;
        l.total_ns = l.total_ns.saturating_add(ns);
        if self.samples_us.len() >= self.params.latency_samples as usize {
            self.samples_us.pop_front();
        }
        self.samples_us.push_back(ns / 1000);
    }

    /// Messages counted so far.
    pub(crate) fn messages(&self) -> u64 {
        self.c.queries + self.c.responses + self.c.malformed + self.c.truncated
    }

    pub(crate) fn timeout_ns(&self) -> u64 {
        self.params.timeout_ms * 1_000_000
    }

    pub(crate) fn timed_out(&self, at: u64) -> bool {
        self.latest_ns.saturating_sub(at) > self.timeout_ns()
    }

    /// Applies the bounds of the current params to the state.
    pub(crate) fn shrink(&mut self) {
        let max = self.params.max_pending as usize;
        if self.pending.len() > max {
            let mut all: Vec<(PendingKey, u64)> =
                self.pending.iter().map(|(k, &t)| (*k, t)).collect();
            // Newest first; ties by key for determinism.
            all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| key_order(&a.0, &b.0)));
            for (k, _) in &all[max..] {
                self.pending.remove(k);
                self.c.untracked_queries += 1;
            }
        }
        let max = self.params.max_names as usize;
        if self.names.len() > max {
            let mut all: Vec<(String, u64)> = self.names.drain().collect();
            all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            for (_, n) in &all[max..] {
                self.c.untracked_name_queries += n;
            }
            all.truncate(max);
            self.names = all.into_iter().collect();
        }
        while self.samples_us.len() > self.params.latency_samples as usize {
            self.samples_us.pop_front();
        }
    }
}

fn key_order(a: &PendingKey, b: &PendingKey) -> std::cmp::Ordering {
    (
        a.version,
        a.proto,
        a.client,
        a.server,
        a.client_port,
        a.server_port,
        a.id,
    )
        .cmp(&(
            b.version,
            b.proto,
            b.client,
            b.server,
            b.client_port,
            b.server_port,
            b.id,
        ))
}

/// Nearest-rank percentile `p` (1 to 100) of sorted, non-empty `v`.
pub(crate) fn percentile(v: &[u64], p: usize) -> u64 {
    let rank = ((p * v.len() + 99) / 100).max(1);
    v[rank.min(v.len()) - 1]
}
