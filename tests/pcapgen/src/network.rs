//! Traffic of a routed network, laid on the taps that see it: UDP flows
//! between hosts behind routers follow the paths a caller's topology gives,
//! and every tap on a path gets a copy. Returns what each tap carries and
//! the router-to-router matrix, exactly.
//!
//! Router `n` is `10.0.n.1`; hosts behind it are `10.{10n}.0.k`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::{Frame, udp};

/// Router `n` (1..=25).
#[must_use]
pub fn router(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, n, 1)
}

/// Host `k` behind router `n`: `10.{10n}.0.k`.
#[must_use]
pub fn host(n: u8, k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, n * 10, 0, k)
}

/// The prefix of the hosts behind router `n`: `10.{10n}.0.0/16`.
#[must_use]
pub fn prefix(n: u8) -> String {
    format!("10.{}.0.0/16", n * 10)
}

/// A tap: monitor address and link id.
pub type Tap = (String, u32);

/// What one tap saw, exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapTruth {
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
    /// First packet, Unix ns.
    pub first_ns: u64,
    /// Last packet, Unix ns.
    pub last_ns: u64,
}

/// Frames per tap and their truth.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Frames per tap, in time order (after [`Traffic::finish`]).
    pub frames: BTreeMap<Tap, Vec<Frame>>,
    /// What each tap carries.
    pub taps: BTreeMap<Tap, TapTruth>,
    /// (from router, to router) → (flows, packets, bytes), for flows some
    /// tap sees.
    pub matrix: BTreeMap<(String, String), (u64, u64, u64)>,
}

/// A bundle of UDP flows: from router, to router, how many flows, packets
/// per flow, payload bytes (each packet adds 0–6 more).
#[derive(Debug, Clone, Copy)]
pub struct Flows {
    /// Source router number.
    pub from: u8,
    /// Destination router number.
    pub to: u8,
    /// Flows (host k → host k, k = 1..=count).
    pub count: u8,
    /// Packets per flow.
    pub packets: u32,
    /// Payload bytes.
    pub payload: usize,
}

/// Lays `flows` on the network: `taps_on_path(from, to)` gives the taps
/// along the path from router `from` to router `to` (empty where nobody
/// taps it).
pub fn udp_flows(
    flows: &[Flows],
    taps_on_path: impl Fn(u8, u8) -> Vec<Tap>,
    start_ns: u64,
) -> Traffic {
    let mut t = Traffic::default();
    for (i, f) in flows.iter().enumerate() {
        let taps = taps_on_path(f.from, f.to);
        for k in 0..f.count {
            let src = host(f.from, k + 1);
            let dst = host(f.to, k + 1);
            let sport = 40_000 + i as u16 * 100 + u16::from(k);
            let frames: Vec<Frame> = (0..f.packets)
                .map(|p| Frame {
                    ts_ns: start_ns
                        + (i as u64 * 1_000 + u64::from(k) * 10 + u64::from(p) * 97) * 1_000_000,
                    data: udp(
                        src,
                        dst,
                        sport,
                        53,
                        &vec![0x5a; f.payload + (p as usize % 7)],
                    ),
                    wire_len: None,
                })
                .collect();
            if !taps.is_empty() {
                let cell = t
                    .matrix
                    .entry((router(f.from).to_string(), router(f.to).to_string()))
                    .or_default();
                cell.0 += 1;
                cell.1 += u64::from(f.packets);
                cell.2 += frames.iter().map(|fr| fr.data.len() as u64).sum::<u64>();
            }
            for tap in &taps {
                t.add((&tap.0, tap.1), frames.iter().cloned());
            }
        }
    }
    t.finish();
    t
}

impl Traffic {
    /// Adds frames to a tap (monitor address, link id).
    pub fn add(&mut self, tap: (&str, u32), frames: impl IntoIterator<Item = Frame>) {
        self.frames
            .entry((tap.0.to_owned(), tap.1))
            .or_default()
            .extend(frames);
    }

    /// Sorts each tap's frames by time and computes what each tap carries.
    pub fn finish(&mut self) {
        self.taps.clear();
        for (key, frames) in &mut self.frames {
            frames.sort_by_key(|f| f.ts_ns);
            self.taps.insert(
                key.clone(),
                TapTruth {
                    packets: frames.len() as u64,
                    bytes: frames.iter().map(|f| f.data.len() as u64).sum(),
                    first_ns: frames.first().map_or(0, |f| f.ts_ns),
                    last_ns: frames.last().map_or(0, |f| f.ts_ns),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tap_on_a_path_gets_each_frame_and_the_matrix_counts_flows_once() {
        let flows = [
            Flows {
                from: 1,
                to: 3,
                count: 2,
                packets: 5,
                payload: 10,
            },
            Flows {
                from: 4,
                to: 1,
                count: 1,
                packets: 3,
                payload: 10,
            },
        ];
        let t = udp_flows(
            &flows,
            |a, b| match (a, b) {
                (1, 3) => vec![("m1".into(), 0), ("m2".into(), 0)],
                _ => vec![],
            },
            1_000,
        );
        assert_eq!(
            t.taps[&("m1".to_string(), 0)],
            t.taps[&("m2".to_string(), 0)]
        );
        assert_eq!(t.taps[&("m1".to_string(), 0)].packets, 10);
        let cell = t.matrix[&("10.0.1.1".to_string(), "10.0.3.1".to_string())];
        assert_eq!((cell.0, cell.1), (2, 10));
        assert_eq!(cell.2, t.taps[&("m1".to_string(), 0)].bytes);
        assert_eq!(t.matrix.len(), 1, "R4→R1 crosses no tap");
    }
}
