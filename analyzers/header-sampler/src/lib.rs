//! `header-sampler`: Keeps the first bytes of matching packets in a bounded ring and returns them as a pcap file.
