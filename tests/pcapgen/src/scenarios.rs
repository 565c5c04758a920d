//! TCP sessions with handshakes, retransmissions and zero windows; SYN and UDP floods and port scans, for tcp-perf and dos-detect.
