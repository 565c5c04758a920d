//! `tcp-perf`: TCP performance: handshake RTT, retransmissions, out-of-order segments, zero windows, resets; flags lossy flows.
