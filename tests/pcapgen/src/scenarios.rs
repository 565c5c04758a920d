//! TCP sessions with handshakes, retransmissions, out-of-order segments,
//! zero windows and resets; SYN and UDP floods and port scans — for
//! `tcp-perf` and `dos-detect`. Every builder records what it generated, so
//! tests take their expected figures from here.

use std::net::{Ipv4Addr, SocketAddr};

use crate::{Frame, Timeline, flags, tcp_segment, udp_datagram};

/// What a [`Session`] generated, seen from the capture point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTruth {
    /// Packets in both directions.
    pub packets: u64,
    /// Segments carrying data (or SYN/FIN) in both directions.
    pub data_packets: u64,
    /// Segments whose bytes had all been sent before.
    pub retransmissions: u64,
    /// Segments filling a gap left by a later segment.
    pub out_of_order: u64,
    /// Segments advertising a zero window.
    pub zero_windows: u64,
    /// Segments with RST.
    pub resets: u64,
    /// SYN → SYN/ACK, ns (0 without a handshake).
    pub syn_to_synack_ns: u64,
    /// SYN/ACK → ACK, ns.
    pub synack_to_ack_ns: u64,
}

/// A TCP connection from `client` to `server`, written to a [`Timeline`].
/// Only the client sends data; the server acknowledges.
#[derive(Debug, Clone)]
pub struct Session {
    /// The connecting side.
    pub client: SocketAddr,
    /// The listening side.
    pub server: SocketAddr,
    /// Client's next sequence number.
    c_next: u32,
    /// Server's next sequence number.
    s_next: u32,
    /// The generated figures.
    pub truth: SessionTruth,
}

const WINDOW: u16 = 64_240;

impl Session {
    /// A session whose initial sequence numbers derive from the ports.
    #[must_use]
    pub fn new(client: SocketAddr, server: SocketAddr) -> Session {
        Session {
            client,
            server,
            c_next: 0x1000_0000 ^ u32::from(client.port()) << 8,
            s_next: 0x7000_0000 ^ u32::from(server.port()) << 4,
            truth: SessionTruth::default(),
        }
    }

    fn push(
        &mut self,
        tl: &mut Timeline,
        from_client: bool,
        seq: u32,
        fl: u8,
        win: u16,
        data: &[u8],
    ) {
        let (src, dst, ack) = if from_client {
            (self.client, self.server, self.s_next)
        } else {
            (self.server, self.client, self.c_next)
        };
        tl.push(tcp_segment(src, dst, seq, ack, fl, win, data));
        self.truth.packets += 1;
        if !data.is_empty() || fl & (flags::SYN | flags::FIN) != 0 {
            self.truth.data_packets += 1;
        }
        if win == 0 && fl & flags::RST == 0 {
            self.truth.zero_windows += 1;
        }
        if fl & flags::RST != 0 {
            self.truth.resets += 1;
        }
    }

    /// SYN, SYN/ACK after `server_ns`, ACK after `client_ns`.
    pub fn handshake(&mut self, tl: &mut Timeline, server_ns: u64, client_ns: u64) {
        let step = tl.step_ns;
        tl.step_ns = server_ns;
        let isn = self.c_next;
        self.push(tl, true, isn, flags::SYN, WINDOW, &[]);
        self.c_next = isn.wrapping_add(1);
        tl.step_ns = client_ns;
        let sisn = self.s_next;
        self.push(tl, false, sisn, flags::SYN | flags::ACK, WINDOW, &[]);
        self.s_next = sisn.wrapping_add(1);
        tl.step_ns = step;
        let seq = self.c_next;
        self.push(tl, true, seq, flags::ACK, WINDOW, &[]);
        self.truth.syn_to_synack_ns = server_ns;
        self.truth.synack_to_ack_ns = client_ns;
    }

    /// The client sends `len` bytes; returns the segment's sequence number.
    pub fn send(&mut self, tl: &mut Timeline, len: usize) -> u32 {
        let seq = self.c_next;
        self.push(
            tl,
            true,
            seq,
            flags::ACK | flags::PSH,
            WINDOW,
            &payload(seq, len),
        );
        self.c_next = seq.wrapping_add(len as u32);
        seq
    }

    /// The client sends `len` bytes at `seq` again: a retransmission.
    pub fn resend(&mut self, tl: &mut Timeline, seq: u32, len: usize) {
        self.push(
            tl,
            true,
            seq,
            flags::ACK | flags::PSH,
            WINDOW,
            &payload(seq, len),
        );
        self.truth.retransmissions += 1;
    }

    /// The client sends two `len`-byte segments in swapped order: the
    /// second one leaves a gap, the first fills it (one out-of-order).
    pub fn send_swapped(&mut self, tl: &mut Timeline, len: usize) {
        let first = self.c_next;
        let second = first.wrapping_add(len as u32);
        self.push(
            tl,
            true,
            second,
            flags::ACK | flags::PSH,
            WINDOW,
            &payload(second, len),
        );
        self.push(
            tl,
            true,
            first,
            flags::ACK | flags::PSH,
            WINDOW,
            &payload(first, len),
        );
        self.c_next = second.wrapping_add(len as u32);
        self.truth.out_of_order += 1;
    }

    /// The server acknowledges everything, advertising `window`.
    pub fn ack(&mut self, tl: &mut Timeline, window: u16) {
        let seq = self.s_next;
        self.push(tl, false, seq, flags::ACK, window, &[]);
    }

    /// FIN from the client, FIN/ACK from the server, last ACK.
    pub fn close(&mut self, tl: &mut Timeline) {
        let seq = self.c_next;
        self.push(tl, true, seq, flags::FIN | flags::ACK, WINDOW, &[]);
        self.c_next = seq.wrapping_add(1);
        let sseq = self.s_next;
        self.push(tl, false, sseq, flags::FIN | flags::ACK, WINDOW, &[]);
        self.s_next = sseq.wrapping_add(1);
        let seq = self.c_next;
        self.push(tl, true, seq, flags::ACK, WINDOW, &[]);
    }

    /// The server resets the connection.
    pub fn reset(&mut self, tl: &mut Timeline) {
        let seq = self.s_next;
        self.push(tl, false, seq, flags::RST | flags::ACK, 0, &[]);
    }
}

/// Deterministic payload bytes for a segment.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize + i) as u8).collect()
}

/// A bulk transfer of `segments` 1000-byte segments, each acknowledged,
/// where every `retransmit_every`-th segment (0: none) is sent again.
pub fn transfer(
    tl: &mut Timeline,
    client: SocketAddr,
    server: SocketAddr,
    segments: usize,
    retransmit_every: usize,
) -> SessionTruth {
    let mut s = Session::new(client, server);
    s.handshake(tl, 2_000_000, 500_000);
    for i in 1..=segments {
        let seq = s.send(tl, 1000);
        if retransmit_every > 0 && i % retransmit_every == 0 {
            s.resend(tl, seq, 1000);
        }
        s.ack(tl, WINDOW);
    }
    s.close(tl);
    s.truth
}

/// A SYN flood: `count` SYNs to `target` from spoofed sources in
/// 198.18.0.0/15 with varying ports, `gap_ns` apart.
pub fn syn_flood(tl: &mut Timeline, target: SocketAddr, count: usize, gap_ns: u64) {
    let step = tl.step_ns;
    tl.step_ns = gap_ns;
    for i in 0..count as u32 {
        let src = SocketAddr::new(
            Ipv4Addr::new(198, 18 + (i >> 16 & 1) as u8, (i >> 8) as u8, i as u8).into(),
            1024 + (i % 60_000) as u16,
        );
        tl.push(tcp_segment(
            src,
            target,
            i.wrapping_mul(2_654_435_761),
            0,
            flags::SYN,
            WINDOW,
            &[],
        ));
    }
    tl.step_ns = step;
}

/// A UDP flood: `count` 512-byte datagrams from `source` to `target`,
/// `gap_ns` apart.
pub fn udp_flood(
    tl: &mut Timeline,
    source: SocketAddr,
    target: SocketAddr,
    count: usize,
    gap_ns: u64,
) {
    let step = tl.step_ns;
    tl.step_ns = gap_ns;
    let data = [0xa5u8; 512];
    for _ in 0..count {
        tl.push(udp_datagram(source, target, &data));
    }
    tl.step_ns = step;
}

/// A port scan: one SYN from `scanner` to each of `ports` ports on
/// `target` (1, 2, …), `gap_ns` apart.
pub fn port_scan(
    tl: &mut Timeline,
    scanner: SocketAddr,
    target: Ipv4Addr,
    ports: u16,
    gap_ns: u64,
) {
    let step = tl.step_ns;
    tl.step_ns = gap_ns;
    for p in 1..=ports {
        let dst = SocketAddr::new(target.into(), p);
        tl.push(tcp_segment(
            scanner,
            dst,
            77 + u32::from(p),
            0,
            flags::SYN,
            1024,
            &[],
        ));
    }
    tl.step_ns = step;
}

/// Frames of a timeline in time order (builders may interleave).
#[must_use]
pub fn sorted(mut frames: Vec<Frame>) -> Vec<Frame> {
    frames.sort_by_key(|f| f.ts_ns);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_lossy_transfer_counts_what_it_generates() {
        let mut tl = Timeline::new(1_000_000_000, 1_000);
        let t = transfer(&mut tl, sa("10.0.0.1:40000"), sa("10.0.0.2:80"), 20, 5);
        // 3 handshake + 20 data + 4 resent + 20 acks + 3 close.
        assert_eq!(t.packets, 50);
        assert_eq!(tl.frames.len(), 50);
        assert_eq!(t.retransmissions, 4);
        // SYN, SYN/ACK, 24 data segments, 2 FINs.
        assert_eq!(t.data_packets, 28);
        assert_eq!(tl.frames[1].ts_ns - tl.frames[0].ts_ns, 2_000_000);
        assert_eq!(tl.frames[2].ts_ns - tl.frames[1].ts_ns, 500_000);
    }

    #[test]
    fn floods_and_scans_have_the_asked_size() {
        let mut tl = Timeline::new(0, 1);
        syn_flood(&mut tl, sa("10.0.0.9:80"), 300, 10);
        port_scan(
            &mut tl,
            sa("10.0.0.7:5555"),
            Ipv4Addr::new(10, 0, 0, 9),
            100,
            10,
        );
        udp_flood(&mut tl, sa("10.0.0.7:9"), sa("10.0.0.9:9"), 50, 10);
        assert_eq!(tl.frames.len(), 450);
        assert_eq!(tl.frames[1].ts_ns - tl.frames[0].ts_ns, 10);
    }
}
