//! Application-protocol payloads (HTTP, TLS, DNS, SSH, QUIC, SMTP, DHCP, NTP, ICMP) and a capture holding them all, for proto-id.
