//! A deployment's packet filter, compiled from the bus's [`Filter`] and
//! applied in the host before the guest sees a packet.

use std::net::IpAddr;

use bus_schema::Filter;
use ipnet::IpNet;
use tm_abi::PacketHeader;

/// A filter was refused; the message names the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

/// The address, port and protocol part of a filter (BPF is compiled per
/// link, see [`compile_bpf`]).
#[derive(Debug, Clone, Default)]
pub struct CompiledFilter {
    src: Vec<IpNet>,
    dst: Vec<IpNet>,
    src_ports: Vec<(u16, u16)>,
    dst_ports: Vec<(u16, u16)>,
    protocols: Vec<u8>,
    /// The raw BPF expression, if any.
    pub bpf: Option<String>,
}

fn nets(field: &str, cidrs: &[String]) -> Result<Vec<IpNet>, FilterError> {
    cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| net(c).map_err(|e| FilterError(format!("filter.{field}[{i}] = {c:?}: {e}"))))
        .collect()
}

/// A CIDR block or a single address, with what is wrong said exactly.
fn net(text: &str) -> Result<IpNet, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| "not an IP address or CIDR block".to_owned());
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>()
        .ok()
        .and_then(|l| IpNet::new(addr, l).ok())
        .ok_or_else(|| format!("prefix length {len} is not 0 to {max}"))
}

fn ports(field: &str, ranges: &[bus_schema::PortRange]) -> Result<Vec<(u16, u16)>, FilterError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.from > r.to {
                Err(FilterError(format!(
                    "filter.{field}[{i}] = {}-{}: from is greater than to",
                    r.from, r.to
                )))
            } else {
                Ok((r.from, r.to))
            }
        })
        .collect()
}

impl CompiledFilter {
    /// Validates and compiles a filter.
    ///
    /// # Errors
    /// A [`FilterError`] naming the first bad field and its value.
    pub fn new(f: &Filter) -> Result<Self, FilterError> {
        if let Some(expr) = &f.bpf
            && expr.trim().is_empty()
        {
            return Err(FilterError("filter.bpf = \"\": empty expression".into()));
        }
        Ok(CompiledFilter {
            src: nets("src", &f.src)?,
            dst: nets("dst", &f.dst)?,
            src_ports: ports("src_ports", &f.src_ports)?,
            dst_ports: ports("dst_ports", &f.dst_ports)?,
            protocols: f.protocols.clone(),
            bpf: f.bpf.clone(),
        })
    }

    /// True if the filter lets every packet through (BPF aside).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.src.is_empty()
            && self.dst.is_empty()
            && self.src_ports.is_empty()
            && self.dst_ports.is_empty()
            && self.protocols.is_empty()
    }

    /// Whether a parsed packet passes the address, port and protocol parts.
    #[must_use]
    pub fn matches(&self, h: &PacketHeader) -> bool {
        if self.is_open() {
            return true;
        }
        if !self.protocols.is_empty() && !self.protocols.contains(&h.ip_proto) {
            return false;
        }
        let has_ports = matches!(h.ip_proto, 6 | 17) && h.l4_offset != tm_abi::NO_OFFSET;
        let port_ok = |ranges: &[(u16, u16)], port: u16| {
            ranges.is_empty()
                || (has_ports && ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&port)))
        };
        if !port_ok(&self.src_ports, h.src_port) || !port_ok(&self.dst_ports, h.dst_port) {
            return false;
        }
        let addr = |raw: &[u8; 16]| -> Option<IpAddr> {
            match h.ip_version {
                4 => Some(IpAddr::from([raw[0], raw[1], raw[2], raw[3]])),
                6 => Some(IpAddr::from(*raw)),
                _ => None,
            }
        };
        let net_ok = |nets: &[IpNet], raw: &[u8; 16]| {
            nets.is_empty() || addr(raw).is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
        };
        net_ok(&self.src, &h.src_addr) && net_ok(&self.dst, &h.dst_addr)
    }
}

/// A compiled BPF program for one link's link type, shared by the taps
/// of a deployment on the link's capture threads.
#[derive(Clone)]
pub struct Bpf(std::sync::Arc<Program>);

struct Program(pcap::BpfProgram);

// SAFETY: the program is only read once compiled (pcap_offline_filter
// takes it by const pointer and keeps its scratch memory on the stack).
unsafe impl Sync for Program {}

impl Bpf {
    /// Whether the captured bytes pass the program.
    #[must_use]
    pub fn matches(&self, data: &[u8]) -> bool {
        self.0.0.filter(data)
    }
}

/// Compiles a BPF expression for a link type (pcap DLT value).
///
/// # Errors
/// libpcap's message, naming the expression.
pub fn compile_bpf(expr: &str, dlt: i32) -> Result<Bpf, FilterError> {
    let dead = pcap::Capture::dead(pcap::Linktype(dlt)).map_err(|e| {
        FilterError(format!(
            "filter.bpf: cannot compile for link type {dlt}: {e}"
        ))
    })?;
    dead.compile(expr, true)
        .map(|p| Bpf(std::sync::Arc::new(Program(p))))
        .map_err(|e| FilterError(format!("filter.bpf = {expr:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::PortRange;

    fn header(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> PacketHeader {
        let mut h = PacketHeader {
            ip_version: 4,
            ip_proto: proto,
            src_port: sport,
            dst_port: dport,
            l4_offset: 34,
            ..PacketHeader::default()
        };
        h.src_addr[..4].copy_from_slice(&src);
        h.dst_addr[..4].copy_from_slice(&dst);
        h
    }

    #[test]
    fn every_part_must_match() {
        let f = CompiledFilter::new(&Filter {
            src: vec!["10.0.0.0/8".into()],
            dst_ports: vec![
                PortRange { from: 80, to: 80 },
                PortRange {
                    from: 8000,
                    to: 8999,
                },
            ],
            protocols: vec![6],
            ..Filter::default()
        })
        .unwrap();
        assert!(f.matches(&header([10, 1, 2, 3], [1, 1, 1, 1], 6, 5000, 80)));
        assert!(f.matches(&header([10, 1, 2, 3], [1, 1, 1, 1], 6, 5000, 8443)));
        assert!(!f.matches(&header([11, 1, 2, 3], [1, 1, 1, 1], 6, 5000, 80)));
        assert!(!f.matches(&header([10, 1, 2, 3], [1, 1, 1, 1], 17, 5000, 80)));
        assert!(!f.matches(&header([10, 1, 2, 3], [1, 1, 1, 1], 6, 5000, 443)));
        assert!(
            CompiledFilter::new(&Filter::default())
                .unwrap()
                .matches(&PacketHeader::default())
        );
    }

    #[test]
    fn bad_filters_are_named() {
        let err = CompiledFilter::new(&Filter {
            dst: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
            ..Filter::default()
        })
        .unwrap_err();
        assert_eq!(
            err.0,
            "filter.dst[1] = \"10.0.0.0/33\": prefix length 33 is not 0 to 32"
        );
        for (cidr, why) in [
            ("10.0.0/8", "\"10.0.0\" is not an IP address"),
            ("::/129", "prefix length 129 is not 0 to 128"),
            ("10.0.0.0/x", "prefix length x is not 0 to 32"),
            ("nowhere", "not an IP address or CIDR block"),
        ] {
            let err = CompiledFilter::new(&Filter {
                src: vec![cidr.into()],
                ..Filter::default()
            })
            .unwrap_err();
            assert_eq!(err.0, format!("filter.src[0] = {cidr:?}: {why}"));
        }
        assert!(
            CompiledFilter::new(&Filter {
                src: vec!["2001:db8::/32".into(), "10.1.2.3".into()],
                ..Filter::default()
            })
            .is_ok()
        );
        let err = CompiledFilter::new(&Filter {
            src_ports: vec![PortRange { from: 90, to: 80 }],
            ..Filter::default()
        })
        .unwrap_err();
        assert_eq!(
            err.0,
            "filter.src_ports[0] = 90-80: from is greater than to"
        );
        let err = compile_bpf("tcp and and", 1).err().unwrap();
        assert!(err.0.starts_with("filter.bpf = \"tcp and and\""), "{err}");
    }

    #[test]
    fn bpf_runs_on_captured_bytes() {
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 53)
            .write(&mut pkt, b"x")
            .unwrap();
        assert!(compile_bpf("udp port 53", 1).unwrap().matches(&pkt));
        assert!(!compile_bpf("tcp", 1).unwrap().matches(&pkt));
    }
}
