//! `dos-detect`: Attack detection: SYN flood, UDP flood and port scan, raised at once as events.
