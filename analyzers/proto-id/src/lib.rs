//! `proto-id`: Protocol identification: L3/L4 mix and application protocols by payload inspection with port hints.
//!
//! Every packet counts in `l3` (ipv4, ipv6, other) and IP packets in `l4` by
//! IP protocol number (tcp, udp, icmp, icmpv6, other). Application
//! protocols are found per bidirectional flow (a 5-tuple, both directions)
//! by inspecting the first payload packets: HTTP/1.x, TLS, DNS, SSH, QUIC,
//! SMTP, DHCP and NTP (see `docs/analyzers/proto-id.md` for the rules).
//! A packet counts under its flow's application only if it carries TCP/UDP
//! payload, as in tshark's protocol hierarchy: handshakes and pure ACKs are
//! only `tcp`; payload packets of flows not identified (yet, or after
//! `inspect_packets` tries) count as `unknown`. ICMP and ICMPv6 packets
//! count under the `icmp` and `icmpv6` applications.
//!
//! Params (all optional): `{"top_n": 10, "max_flows": 100000,
//! "idle_timeout_s": 300, "inspect_packets": 4, "max_names": 1000}`.
//!
//! Results: `{"packets", "bytes", "l3": {name: {"packets", "bytes"}},
//! "l4": {…}, "app": {name: {"packets", "bytes", "flows"}}, "http":
//! {"requests", "responses", "methods": {method: n}, "hosts": [{"host",
//! "requests", "methods"}], "untracked_requests"}, "tls": {"client_hellos",
//! "server_hellos", "no_sni", "versions": {version: n}, "snis": [{"sni",
//! "version", "handshakes"}], "untracked_hellos"}, "active_flows",
//! "expired_flows", "refused_packets"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tm_sdk::{abi, Analyzer, FlowKey as Key, FxHashMap, Packet};

/// Deserializers that put the field's name in front of a type error
/// (serde's own message does not say which field had the wrong type).
macro_rules! named {
    ($($fn_name:ident: $ty:ty = $field:literal;)*) => {$(
        fn $fn_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            <$ty>::deserialize(d).map_err(|e| serde::de::Error::custom(format!("{}: {}", $field, e)))
        }
    )*};
}

named! {
    de_top_n: u32 = "top_n";
    de_max_flows: u32 = "max_flows";
    de_idle_timeout_s: u64 = "idle_timeout_s";
    de_inspect_packets: u32 = "inspect_packets";
    de_max_names: u32 = "max_names";
}

/// Parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Entries of the HTTP host and TLS SNI lists in the results.
    #[serde(deserialize_with = "de_top_n")]
    pub top_n: u32,
    /// Most flows tracked at once.
    #[serde(deserialize_with = "de_max_flows")]
    pub max_flows: u32,
    /// Idle time (packet time) after which a flow is forgotten; 0 never.
    #[serde(deserialize_with = "de_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Payload packets of a flow inspected before it is given up as unknown.
    #[serde(deserialize_with = "de_inspect_packets")]
    pub inspect_packets: u32,
    /// Most HTTP hosts, and most (SNI, version) pairs, counted.
    #[serde(deserialize_with = "de_max_names")]
    pub max_names: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            top_n: 10,
            max_flows: 100_000,
            idle_timeout_s: 300,
            inspect_packets: 4,
            max_names: 1000,
        }
    }
}

impl Params {
    fn check(self) -> Result<Self, String> {
        if self.top_n > 1000 {
            return Err(format!("top_n = {}: must be 0 to 1000", self.top_n));
        }
        if self.max_flows == 0 || self.max_flows > 10_000_000 {
            return Err(format!(
                "max_flows = {}: must be 1 to 10000000",
                self.max_flows
            ));
        }
        if self.idle_timeout_s > 30 * 86_400 {
            return Err(format!(
                "idle_timeout_s = {}: must be 0 to 2592000",
                self.idle_timeout_s
            ));
        }
        if self.inspect_packets == 0 || self.inspect_packets > 64 {
            return Err(format!(
                "inspect_packets = {}: must be 1 to 64",
                self.inspect_packets
            ));
        }
        if self.max_names == 0 || self.max_names > 100_000 {
            return Err(format!(
                "max_names = {}: must be 1 to 100000",
                self.max_names
            ));
        }
        Ok(self)
    }
}

// --- names ----------------------------------------------------------------

const L3_NAMES: [&str; 3] = ["ipv4", "ipv6", "other"];
const L4_NAMES: [&str; 5] = ["tcp", "udp", "icmp", "icmpv6", "other"];

/// Application protocols, as indices into [`APP_NAMES`].
mod app {
    pub const HTTP: u8 = 0;
    pub const TLS: u8 = 1;
    pub const DNS: u8 = 2;
    pub const SSH: u8 = 3;
    pub const QUIC: u8 = 4;
    pub const SMTP: u8 = 5;
    pub const DHCP: u8 = 6;
    pub const NTP: u8 = 7;
    pub const ICMP: u8 = 8;
    pub const ICMPV6: u8 = 9;
    pub const UNKNOWN: u8 = 10;
    pub const COUNT: usize = 11;
}

const APP_NAMES: [&str; app::COUNT] = [
    "http", "tls", "dns", "ssh", "quic", "smtp", "dhcp", "ntp", "icmp", "icmpv6", "unknown",
];

/// HTTP request methods recognised (each followed by a space).
const METHODS: [&str; 9] = [
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// TLS versions counted by name; anything else is `other`.
const TLS_VERSIONS: [(u16, &str); 5] = [
    (0x0300, "SSL 3.0"),
    (0x0301, "TLS 1.0"),
    (0x0302, "TLS 1.1"),
    (0x0303, "TLS 1.2"),
    (0x0304, "TLS 1.3"),
];
const TLS_OTHER: usize = TLS_VERSIONS.len();

fn tls_version_index(v: u16) -> usize {
    TLS_VERSIONS
        .iter()
        .position(|(n, _)| *n == v)
        .unwrap_or(TLS_OTHER)
}

fn tls_version_name(i: usize) -> &'static str {
    TLS_VERSIONS.get(i).map_or("other", |(_, name)| name)
}

// --- byte helpers -----------------------------------------------------------

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be24(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(*b.get(at)?) << 16 | usize::from(be16(b, at + 1)?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(be16(b, at)?) << 16 | u32::from(be16(b, at + 2)?))
}

/// `b[at..at + len]`, cut to what `b` holds (captures may be short).
fn part(b: &[u8], at: usize, len: usize) -> &[u8] {
    let start = at.min(b.len());
    let end = at.saturating_add(len).min(b.len());
    &b[start..end]
}

fn starts_with_ignore_case(b: &[u8], prefix: &[u8]) -> bool {
    b.len() >= prefix.len() && b[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A name from the wire (HTTP host, TLS SNI): 1 to 255 printable ASCII
/// bytes without spaces, lowercased.
fn name(b: &[u8]) -> Option<String> {
    if b.is_empty() || b.len() > 255 || !b.iter().all(|c| (0x21..0x7f).contains(c)) {
        return None;
    }
    Some(String::from_utf8_lossy(b).to_ascii_lowercase())
}

// --- detection --------------------------------------------------------------

/// What a packet's captured L4 payload looks like, with its ports as
/// hints; `None` if no rule matches.
fn detect(proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Option<u8> {
    let port = |ports: &[u16]| ports.contains(&sport) || ports.contains(&dport);
    match proto {
        17 => {
            if port(&[53]) && dns_header_ok(payload) {
                Some(app::DNS)
            } else if port(&[67, 68]) && dhcp_ok(payload) {
                Some(app::DHCP)
            } else if port(&[123]) && ntp_ok(payload) {
                Some(app::NTP)
            } else if quic_ok(payload, port(&QUIC_PORTS)) {
                Some(app::QUIC)
            } else {
                None
            }
        }
        6 => {
            if tls_ok(payload, port(&TLS_PORTS)) {
                Some(app::TLS)
            } else if http_request_method(payload).is_some() || http_response(payload) {
                Some(app::HTTP)
            } else if ssh_ok(payload) {
                Some(app::SSH)
            } else if port(&[25, 587, 2525]) && smtp_ok(payload) {
                Some(app::SMTP)
            } else if port(&[53]) && payload.len() >= 14 {
                let len = be16(payload, 0).map_or(0, usize::from);
                if len >= 12 && dns_header_ok(&payload[2..]) {
                    Some(app::DNS)
                } else {
                    None
                }
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Ports where TLS records other than handshakes are taken for TLS.
const TLS_PORTS: [u16; 9] = [443, 465, 563, 636, 853, 993, 995, 5061, 8443];
/// Ports where a QUIC long header of any size is taken for QUIC.
const QUIC_PORTS: [u16; 3] = [443, 4433, 8443];

/// A DNS header: opcode QUERY, IQUERY, STATUS, NOTIFY or UPDATE, at most 16
/// questions and 1024 records per section, and the first question's name
/// well-formed as far as it was captured.
fn dns_header_ok(b: &[u8]) -> bool {
    if b.len() < 12 {
        return false;
    }
    let opcode = (b[2] >> 3) & 0x0f;
    if !matches!(opcode, 0 | 1 | 2 | 4 | 5) {
        return false;
    }
    let counts = [4, 6, 8, 10].map(|at| be16(b, at).unwrap_or(0));
    if counts[0] > 16 || counts[1..].iter().any(|c| *c > 1024) {
        return false;
    }
    if counts.iter().all(|c| *c == 0) {
        return false;
    }
    if counts[0] == 0 {
        return true;
    }
    // Labels up to the root or a compression pointer.
    let mut at = 12;
    let mut total = 0;
    while let Some(&len) = b.get(at) {
        match len {
            0 => return true,
            1..=63 => {
                total += usize::from(len) + 1;
                if total > 255 {
                    return false;
                }
                at += usize::from(len) + 1;
            }
            0xc0..=0xff => return true,
            _ => return false,
        }
    }
    true // the capture ends inside the name
}

/// BOOTP op 1 or 2, a hardware address length up to 16 and the DHCP magic
/// cookie at offset 236.
fn dhcp_ok(b: &[u8]) -> bool {
    b.len() >= 240 && matches!(b[0], 1 | 2) && b[2] <= 16 && b[236..240] == [0x63, 0x82, 0x53, 0x63]
}

/// 48 bytes or more, version 3 or 4, mode 1 to 5.
fn ntp_ok(b: &[u8]) -> bool {
    b.len() >= 48 && matches!((b[0] >> 3) & 7, 3 | 4) && matches!(b[0] & 7, 1..=5)
}

/// A QUIC long header (header form and fixed bit set) of version 1, 2 or a
/// draft 29 to 34, with connection ids of at most 20 bytes; on a QUIC port,
/// or an Initial of at least 1200 bytes (the client's minimum) anywhere.
fn quic_ok(b: &[u8], port_hint: bool) -> bool {
    if b.len() < 7 || b[0] & 0xc0 != 0xc0 {
        return false;
    }
    let version = be32(b, 1).unwrap_or(0);
    let kind = (b[0] >> 4) & 3;
    let initial = match version {
        1 | 0xff00_001d..=0xff00_0022 => kind == 0,
        0x6b33_43cf => kind == 1,
        _ => return false,
    };
    let dcid = usize::from(b[5]);
    if dcid > 20 {
        return false;
    }
    if let Some(&scid) = b.get(6 + dcid) {
        if scid > 20 {
            return false;
        }
    }
    port_hint || (initial && b.len() >= 1200)
}

/// A TLS record header (content type 20 to 23, version 3.0 to 3.4, a
/// length up to 2^14 + 2048); a handshake record must start a ClientHello
/// or ServerHello, other records count only on a TLS port.
fn tls_ok(b: &[u8], port_hint: bool) -> bool {
    if b.len() < 5 || !(20..=23).contains(&b[0]) || b[1] != 3 || b[2] > 4 {
        return false;
    }
    let len = usize::from(be16(b, 3).unwrap_or(0));
    if len == 0 || len > 18_432 {
        return false;
    }
    if b[0] == 22 {
        match b.get(5) {
            Some(1) | Some(2) => true,
            Some(_) => port_hint,
            None => false,
        }
    } else {
        port_hint
    }
}

/// The index in [`METHODS`] of an HTTP/1.x request line's method: the
/// method, a space and a target; the line, when it was captured whole,
/// ends in ` HTTP/1.0` or ` HTTP/1.1`.
fn http_request_method(b: &[u8]) -> Option<usize> {
    let i = METHODS
        .iter()
        .position(|m| b.len() > m.len() + 1 && b.starts_with(m.as_bytes()) && b[m.len()] == b' ')?;
    let rest = &b[METHODS[i].len() + 1..];
    let first = rest[0];
    if !(first == b'/' || first == b'*' || first.is_ascii_alphanumeric()) {
        return None;
    }
    let window = part(rest, 0, 4096);
    match window.iter().position(|&c| c == b'\n') {
        Some(end) => {
            let mut line = &window[..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                Some(i)
            } else {
                None
            }
        }
        // Cut before the end of the line: printable so far.
        None if window.iter().all(|c| (0x20..0x7f).contains(c)) => Some(i),
        None => None,
    }
}

/// An HTTP/1.x status line: `HTTP/1.0 ` or `HTTP/1.1 ` and a 3-digit code
/// (as far as captured).
fn http_response(b: &[u8]) -> bool {
    if !(b.starts_with(b"HTTP/1.1 ") || b.starts_with(b"HTTP/1.0 ")) {
        return false;
    }
    part(b, 9, 3).iter().all(u8::is_ascii_digit)
}

/// The `Host` header of a request, if its line was captured whole.
fn http_host(b: &[u8]) -> Option<String> {
    let window = part(b, 0, 8192);
    let mut lines = window.split(|&c| c == b'\n');
    lines.next(); // request line
    let mut seen = 0;
    for line in lines {
        // The last piece has no newline: it was not captured whole.
        let whole = line.as_ptr() as usize + line.len() < window.as_ptr() as usize + window.len();
        if !whole {
            return None;
        }
        let line = match line.last() {
            Some(b'\r') => &line[..line.len() - 1],
            _ => line,
        };
        if line.is_empty() {
            return None; // end of the headers
        }
        if starts_with_ignore_case(line, b"host:") {
            let value = &line[5..];
            let start = value
                .iter()
                .position(|c| *c != b' ' && *c != b'\t')
                .unwrap_or(value.len());
            let end = value
                .iter()
                .rposition(|c| *c != b' ' && *c != b'\t')
                .map_or(start, |e| e + 1);
            return name(&value[start..end.max(start)]);
        }
        seen += 1;
        if seen > 100 {
            return None;
        }
    }
    None
}

/// `SSH-` and a protocol version digit.
fn ssh_ok(b: &[u8]) -> bool {
    b.len() >= 5 && b.starts_with(b"SSH-") && b[4].is_ascii_digit()
}

/// A `220` greeting or an `EHLO`/`HELO` command.
fn smtp_ok(b: &[u8]) -> bool {
    b.starts_with(b"220 ")
        || b.starts_with(b"220-")
        || starts_with_ignore_case(b, b"EHLO ")
        || starts_with_ignore_case(b, b"HELO ")
}

/// TLS handshake facts from the first record of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hello {
    /// A ClientHello: its SNI and the highest version offered
    /// (supported_versions if present, else the hello's version).
    Client(Option<String>, u16),
    /// A ServerHello: the version chosen.
    Server(u16),
}

fn grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// Reads a ClientHello or ServerHello as far as it was captured.
fn tls_hello(b: &[u8]) -> Option<Hello> {
    if b.len() < 6 || b[0] != 22 {
        return None;
    }
    let record_len = usize::from(be16(b, 3)?);
    let record = part(b, 5, record_len);
    let kind = *record.first()?;
    if kind != 1 && kind != 2 {
        return None;
    }
    let hs_len = be24(record, 1).unwrap_or(0);
    let body = part(record, 4, hs_len);
    let legacy = be16(body, 0)?;
    // Random, then the session id.
    let mut at = 2 + 32;
    at += 1 + usize::from(*body.get(at).unwrap_or(&0));
    if kind == 1 {
        at += 2 + usize::from(be16(body, at).unwrap_or(0)); // cipher suites
        at += 1 + usize::from(*body.get(at).unwrap_or(&0)); // compression
    } else {
        at += 2 + 1; // cipher suite, compression
    }
    let ext_len = usize::from(be16(body, at).unwrap_or(0));
    let exts = part(body, at + 2, ext_len);
    let mut sni = None;
    let mut version = legacy;
    let mut at = 0;
    while at + 4 <= exts.len() {
        let kind_ext = be16(exts, at)?;
        let len = usize::from(be16(exts, at + 2)?);
        if at + 4 + len > exts.len() {
            break; // cut by the capture
        }
        let data = &exts[at + 4..at + 4 + len];
        match (kind, kind_ext) {
            // server_name_list: type 0 (host_name), length, name.
            (1, 0) if data.get(2) == Some(&0) => {
                let n = usize::from(be16(data, 3).unwrap_or(0));
                if 5 + n <= data.len() {
                    sni = name(&data[5..5 + n]);
                }
            }
            (1, 43) => {
                let n = usize::from(*data.first().unwrap_or(&0));
                let best = part(data, 1, n)
                    .chunks(2)
                    .filter(|c| c.len() == 2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .filter(|v| !grease(*v))
                    .max();
                if let Some(v) = best {
                    version = v;
                }
            }
            (2, 43) if data.len() == 2 => version = be16(data, 0)?,
            _ => {}
        }
        at += 4 + len;
    }
    Some(if kind == 1 {
        Hello::Client(sni, version)
    } else {
        Hello::Server(version)
    })
}

// --- state ------------------------------------------------------------------

/// Packets and wire bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

/// Packets, wire bytes and flows of an application protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTally {
    /// Packets (with payload, or ICMP).
    pub packets: u64,
    /// Their wire bytes.
    pub bytes: u64,
    /// Bidirectional flows classified so.
    pub flows: u64,
}

/// A flow being followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Flow {
    /// Application (`app::UNKNOWN` while not identified).
    app: u8,
    /// Payload packets inspected so far.
    tries: u8,
    /// Last packet, Unix ns.
    last_ns: u64,
}

/// Requests of one HTTP host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HostCount {
    requests: u64,
    methods: [u64; METHODS.len()],
}

/// Counters; all of them are saved in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    packets: u64,
    bytes: u64,
    l3: [Tally; 3],
    l4: [Tally; 5],
    app: [AppTally; app::COUNT],
    expired_flows: u64,
    refused_packets: u64,
    http_requests: u64,
    http_responses: u64,
    http_methods: [u64; METHODS.len()],
    http_untracked: u64,
    tls_client_hellos: u64,
    tls_server_hellos: u64,
    tls_no_sni: u64,
    tls_versions: [u64; TLS_OTHER + 1],
    tls_untracked: u64,
    latest_ns: u64,
}

// --- results ------------------------------------------------------------------

/// An HTTP host in the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOut {
    /// `Host` header, lowercased.
    pub host: String,
    /// Requests.
    pub requests: u64,
    /// Requests per method.
    pub methods: BTreeMap<String, u64>,
}

/// HTTP figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOut {
    /// Request lines seen.
    pub requests: u64,
    /// Status lines seen.
    pub responses: u64,
    /// Requests per method.
    pub methods: BTreeMap<String, u64>,
    /// Top hosts by requests.
    pub hosts: Vec<HostOut>,
    /// Requests with a host not counted because `max_names` hosts were.
    pub untracked_requests: u64,
}

/// A TLS server name in the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniOut {
    /// server_name, lowercased.
    pub sni: String,
    /// Highest version the client offered.
    pub version: String,
    /// ClientHellos.
    pub handshakes: u64,
}

/// TLS figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOut {
    /// ClientHellos seen.
    pub client_hellos: u64,
    /// ServerHellos seen.
    pub server_hellos: u64,
    /// ClientHellos without a (readable) server name.
    pub no_sni: u64,
    /// ServerHellos per version chosen.
    pub versions: BTreeMap<String, u64>,
    /// Top (SNI, version) pairs by ClientHellos.
    pub snis: Vec<SniOut>,
    /// ClientHellos with an SNI not counted because `max_names` pairs were.
    pub untracked_hellos: u64,
}

/// The results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// Packets seen.
    pub packets: u64,
    /// Wire bytes seen.
    pub bytes: u64,
    /// Per network protocol: ipv4, ipv6, other.
    pub l3: BTreeMap<String, Tally>,
    /// Per transport protocol of IP packets: tcp, udp, icmp, icmpv6, other.
    pub l4: BTreeMap<String, Tally>,
    /// Per application protocol.
    pub app: BTreeMap<String, AppTally>,
    /// HTTP requests and responses.
    pub http: HttpOut,
    /// TLS handshakes.
    pub tls: TlsOut,
    /// Flows followed now.
    pub active_flows: u64,
    /// Flows forgotten after `idle_timeout_s`.
    pub expired_flows: u64,
    /// Packets of new flows refused at `max_flows`.
    pub refused_packets: u64,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    counters: Counters,
    flows: Vec<(Key, Flow)>,
    hosts: Vec<(String, HostCount)>,
    snis: Vec<((String, u8), u64)>,
}

/// The analyzer.
pub struct ProtoId {
    params: Params,
    c: Counters,
    flows: FxHashMap<Key, Flow>,
    hosts: FxHashMap<String, HostCount>,
    /// ClientHellos per (SNI, version index).
    snis: FxHashMap<(String, u8), u64>,
}

impl ProtoId {
    /// Counts what an HTTP or TLS payload says.
    fn inspect_app(&mut self, app_id: u8, payload: &[u8]) {
        match app_id {
            app::HTTP => {
                if let Some(m) = http_request_method(payload) {
                    self.c.http_requests += 1;
                    self.c.http_methods[m] += 1;
                    if let Some(host) = http_host(payload) {
                        let full = self.hosts.len() >= self.params.max_names as usize;
                        match self.hosts.get_mut(&host) {
                            Some(h) => {
                                h.requests += 1;
                                h.methods[m] += 1;
                            }
                            None if full => self.c.http_untracked += 1,
                            None => {
                                let mut h = HostCount {
                                    requests: 1,
                                    ..HostCount::default()
                                };
                                h.methods[m] = 1;
                                self.hosts.insert(host, h);
                            }
                        }
                    }
                } else if http_response(payload) {
                    self.c.http_responses += 1;
                }
            }
            app::TLS => match tls_hello(payload) {
                Some(Hello::Client(sni, version)) => {
                    self.c.tls_client_hellos += 1;
                    let sni = match sni {
                        Some(s) => s,
                        None => {
                            self.c.tls_no_sni += 1;
                            return;
                        }
                    };
                    let key = (sni, tls_version_index(version) as u8);
                    let full = self.snis.len() >= self.params.max_names as usize;
                    match self.snis.get_mut(&key) {
                        Some(n) => *n += 1,
                        None if full => self.c.tls_untracked += 1,
                        None => {
                            self.snis.insert(key, 1);
                        }
                    }
                }
                Some(Hello::Server(version)) => {
                    self.c.tls_server_hellos += 1;
                    self.c.tls_versions[tls_version_index(version)] += 1;
                }
                None => {}
            },
            _ => {}
        }
    }

    /// The application of a packet with payload (or an ICMP packet), from
    /// its flow; `None` if the flow was refused at `max_flows`.
    fn classify(&mut self, p: &Packet, key: Key, fixed: Option<u8>) -> Option<u8> {
        let h = &p.header;
        let payload = p.payload();
        let inspect = self.params.inspect_packets;
        let full = self.flows.len() >= self.params.max_flows as usize;
        let app_counts = &mut self.c.app;
        match self.flows.get_mut(&key) {
            Some(f) => {
                f.last_ns = f.last_ns.max(h.ts_ns);
                if f.app == app::UNKNOWN && u32::from(f.tries) < inspect && !payload.is_empty() {
                    f.tries += 1;
                    if let Some(a) = detect(h.ip_proto, h.src_port, h.dst_port, payload) {
                        f.app = a;
                        let unknown = &mut app_counts[app::UNKNOWN as usize].flows;
                        *unknown = unknown.saturating_sub(1);
                        app_counts[a as usize].flows += 1;
                    }
                }
                Some(f.app)
            }
            None if full => None,
            None => {
                let mut f = Flow {
                    app: app::UNKNOWN,
                    tries: 0,
                    last_ns: h.ts_ns,
                };
                match fixed {
                    Some(a) => f.app = a,
                    None if !payload.is_empty() => {
                        f.tries = 1;
                        if let Some(a) = detect(h.ip_proto, h.src_port, h.dst_port, payload) {
                            f.app = a;
                        }
                    }
                    None => {}
                }
                app_counts[f.app as usize].flows += 1;
                self.flows.insert(key, f);
                Some(f.app)
            }
        }
    }

    fn expire(&mut self) {
        if self.params.idle_timeout_s == 0 {
            return;
        }
        let limit = self.params.idle_timeout_s * 1_000_000_000;
        let now = self.c.latest_ns;
        let before = self.flows.len();
        self.flows
            .retain(|_, f| now.saturating_sub(f.last_ns) < limit);
        self.c.expired_flows += (before - self.flows.len()) as u64;
    }
}

impl Analyzer for ProtoId {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(ProtoId {
            params: params.check()?,
            c: Counters::default(),
            flows: FxHashMap::default(),
            hosts: FxHashMap::default(),
            snis: FxHashMap::default(),
        })
    }

    fn on_packet(&mut self, p: &Packet) {
        let h = &p.header;
        let wire = u64::from(h.wire_len);
        self.c.packets += 1;
        self.c.bytes += wire;
        self.c.latest_ns = self.c.latest_ns.max(h.ts_ns);
        let key = match p.flow() {
            Some(k) => k,
            None => {
                self.c.l3[2].add(wire);
                return;
            }
        };
        self.c.l3[if h.ip_version == 4 { 0 } else { 1 }].add(wire);
        let (l4, fixed) = match h.ip_proto {
            6 => (0, None),
            17 => (1, None),
            1 => (2, Some(app::ICMP)),
            58 => (3, Some(app::ICMPV6)),
            _ => (4, None),
        };
        self.c.l4[l4].add(wire);
        // Non-first fragments have no L4 header; other protocols no rules.
        if h.flags & abi::flag::FRAGMENT != 0 || l4 == 4 {
            return;
        }
        let (key, _) = key.bidirectional();
        if fixed.is_none() && p.payload_len() == 0 {
            // Handshakes and pure ACKs: only keep the flow alive.
            if let Some(f) = self.flows.get_mut(&key) {
                f.last_ns = f.last_ns.max(h.ts_ns);
            }
            return;
        }
        let app_id = match self.classify(p, key, fixed) {
            Some(a) => a,
            None => {
                self.c.refused_packets += 1;
                fixed.unwrap_or(app::UNKNOWN)
            }
        };
        let t = &mut self.c.app[app_id as usize];
        t.packets += 1;
        t.bytes += wire;
        if app_id == app::HTTP || app_id == app::TLS {
            self.inspect_app(app_id, p.payload());
        }
    }

    fn tick(&mut self, _now_ns: u64) {
        self.expire();
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.params = params.check()?;
        Ok(())
    }

    fn results(&self) -> Results {
        let c = &self.c;
        let tallies = |names: &[&str], t: &[Tally]| {
            names
                .iter()
                .zip(t)
                .map(|(n, t)| (n.to_string(), *t))
                .collect()
        };
        let methods = |counts: &[u64]| {
            METHODS
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(m, n)| (m.to_string(), *n))
                .collect::<BTreeMap<String, u64>>()
        };
        let top_n = self.params.top_n as usize;
        let mut hosts: Vec<(&String, &HostCount)> = self.hosts.iter().collect();
        hosts.sort_unstable_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
        let mut snis: Vec<(&(String, u8), &u64)> = self.snis.iter().collect();
        snis.sort_unstable_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        Results {
            packets: c.packets,
            bytes: c.bytes,
            l3: tallies(&L3_NAMES, &c.l3),
            l4: tallies(&L4_NAMES, &c.l4),
            app: APP_NAMES
                .iter()
                .zip(c.app.iter())
                .map(|(n, t)| (n.to_string(), *t))
                .collect(),
            http: HttpOut {
                requests: c.http_requests,
                responses: c.http_responses,
                methods: methods(&c.http_methods),
                hosts: hosts
                    .into_iter()
                    .take(top_n)
                    .map(|(host, h)| HostOut {
                        host: host.clone(),
                        requests: h.requests,
                        methods: methods(&h.methods),
                    })
                    .collect(),
                untracked_requests: c.http_untracked,
            },
            tls: TlsOut {
                client_hellos: c.tls_client_hellos,
                server_hellos: c.tls_server_hellos,
                no_sni: c.tls_no_sni,
                versions: c
                    .tls_versions
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| (tls_version_name(i).to_string(), *n))
                    .collect(),
                snis: snis
                    .into_iter()
                    .take(top_n)
                    .map(|((sni, v), n)| SniOut {
                        sni: sni.clone(),
                        version: tls_version_name(usize::from(*v)).to_string(),
                        handshakes: *n,
                    })
                    .collect(),
                untracked_hellos: c.tls_untracked,
            },
            active_flows: self.flows.len() as u64,
            expired_flows: c.expired_flows,
            refused_packets: c.refused_packets,
        }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&Saved {
            counters: self.c.clone(),
            flows: self.flows.iter().map(|(k, f)| (*k, *f)).collect(),
            hosts: self.hosts.iter().map(|(k, h)| (k.clone(), *h)).collect(),
            snis: self.snis.iter().map(|(k, n)| (k.clone(), *n)).collect(),
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: Saved = tm_sdk::decode_state(state)?;
        if saved
            .flows
            .iter()
            .any(|(_, f)| usize::from(f.app) >= app::COUNT)
            || saved
                .snis
                .iter()
                .any(|((_, v), _)| usize::from(*v) > TLS_OTHER)
        {
            return Err("bad saved state: application or version out of range".into());
        }
        self.c = saved.counters;
        self.flows = saved.flows.into_iter().collect();
        self.hosts = saved.hosts.into_iter().collect();
        self.snis = saved.snis.into_iter().collect();
        Ok(())
    }
}

tm_sdk::export_analyzer!(ProtoId);

#[cfg(test)]
mod tests {
    use super::*;
    use tm_sdk::abi::{PacketHeader, NO_OFFSET};

    /// Ethernet + IPv4 + TCP (20-byte header) or UDP + payload, and the
    /// host's view of it.
    fn frame(
        proto: u8,
        src: u8,
        dst: u8,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> (PacketHeader, Vec<u8>) {
        let l4_len = if proto == 6 { 20 } else { 8 };
        let mut f = vec![0u8; 14 + 20 + l4_len];
        f[12] = 0x08;
        f[14] = 0x45;
        let total = (20 + l4_len + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[23] = proto;
        f[26..30].copy_from_slice(&[10, 0, 0, src]);
        f[30..34].copy_from_slice(&[10, 0, 0, dst]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            f[34 + 12] = 5 << 4;
            f[34 + 13] = flags;
        } else {
            f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        let mut h = PacketHeader {
            ip_version: 4,
            ip_proto: proto,
            l3_offset: 14,
            l4_offset: 34,
            payload_offset: (34 + l4_len) as u16,
            src_port: sport,
            dst_port: dport,
            tcp_flags: flags,
            cap_len: f.len() as u32,
            wire_len: f.len() as u32,
            ..PacketHeader::default()
        };
        h.src_addr[..4].copy_from_slice(&[10, 0, 0, src]);
        h.dst_addr[..4].copy_from_slice(&[10, 0, 0, dst]);
        (h, f)
    }

    fn feed(a: &mut ProtoId, (h, f): &(PacketHeader, Vec<u8>)) {
        a.on_packet(&Packet {
            header: *h,
            data: f,
        });
    }

    fn tcp(src: u8, dst: u8, sport: u16, dport: u16, payload: &[u8]) -> (PacketHeader, Vec<u8>) {
        frame(6, src, dst, sport, dport, 0x18, payload)
    }

    fn udp(src: u8, dst: u8, sport: u16, dport: u16, payload: &[u8]) -> (PacketHeader, Vec<u8>) {
        frame(17, src, dst, sport, dport, 0, payload)
    }

    fn app_of(r: &Results, name: &str) -> (u64, u64, u64) {
        let t = r.app[name];
        (t.packets, t.bytes, t.flows)
    }

    /// A ClientHello record with SNI and supported_versions (GREASE first).
    fn client_hello(sni: &str) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut sn = vec![0u8];
        sn.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        sn.extend_from_slice(sni.as_bytes());
        let mut data = (sn.len() as u16).to_be_bytes().to_vec();
        data.extend(sn);
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend(data);
        ext.extend_from_slice(&[0, 43, 0, 7, 6, 0x3a, 0x3a, 3, 4, 3, 3]);
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[7; 32]);
        hello.push(0);
        hello.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        hello.extend(ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        hs.extend(hello);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn server_hello(version: Option<u16>) -> Vec<u8> {
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[9; 32]);
        hello.push(0);
        hello.extend_from_slice(&[0x13, 0x01, 0]);
        match version {
            Some(v) => {
                hello.extend_from_slice(&[0, 6, 0, 43, 0, 2]);
                hello.extend_from_slice(&v.to_be_bytes());
            }
            None => hello.extend_from_slice(&[0, 0]),
        }
        let mut rec = vec![
            22,
            3,
            3,
            0,
            (hello.len() + 4) as u8,
            2,
            0,
            0,
            hello.len() as u8,
        ];
        rec.extend(hello);
        rec
    }

    fn dhcp() -> Vec<u8> {
        let mut d = vec![0u8; 300];
        d[0] = 1;
        d[1] = 1;
        d[2] = 6;
        d[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        d
    }

    #[test]
    fn each_protocol_is_recognised_and_near_misses_are_not() {
        let dns_q = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w', 0, 0, 1, 0, 1,
        ];
        let mut dns_tcp = vec![0, dns_q.len() as u8];
        dns_tcp.extend_from_slice(&dns_q);
        let mut ntp = vec![0u8; 48];
        ntp[0] = 0x23;
        let mut quic = vec![0xc3, 0, 0, 0, 1, 8];
        quic.extend_from_slice(&[1; 8]);
        quic.push(0);
        quic.resize(1200, 0xaa);
        type Case = (u8, u16, u16, Vec<u8>, Option<u8>);
        let cases: Vec<Case> = vec![
            (
                6,
                50000,
                80,
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                Some(app::HTTP),
            ),
            (
                6,
                50000,
                8000,
                b"PATCH /x HTTP/1.0\r\n".to_vec(),
                Some(app::HTTP),
            ),
            (
                6,
                80,
                50000,
                b"HTTP/1.1 200 OK\r\n".to_vec(),
                Some(app::HTTP),
            ),
            (6, 50000, 80, b"GETS / HTTP/1.1\r\n".to_vec(), None),
            (6, 50000, 80, b"GET / SIP/2.0\r\n".to_vec(), None),
            (6, 50000, 4433, client_hello("a.example"), Some(app::TLS)),
            (6, 443, 50000, server_hello(None), Some(app::TLS)),
            (6, 50000, 443, vec![23, 3, 3, 0, 10, 1, 2], Some(app::TLS)),
            (6, 50000, 9000, vec![23, 3, 3, 0, 10, 1, 2], None),
            (
                6,
                22,
                50000,
                b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
                Some(app::SSH),
            ),
            (6, 25, 50000, b"220 mx ESMTP\r\n".to_vec(), Some(app::SMTP)),
            (6, 50000, 587, b"ehlo me\r\n".to_vec(), Some(app::SMTP)),
            (6, 21, 50000, b"220 FTP ready\r\n".to_vec(), None),
            (6, 50000, 53, dns_tcp, Some(app::DNS)),
            (17, 50000, 53, dns_q.to_vec(), Some(app::DNS)),
            (17, 50000, 5353, dns_q.to_vec(), None),
            (
                17,
                50000,
                53,
                vec![0x12, 0x34, 0x78, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                None,
            ),
            (17, 68, 67, dhcp(), Some(app::DHCP)),
            (17, 68, 67, dhcp()[..239].to_vec(), None),
            (17, 123, 123, ntp.clone(), Some(app::NTP)),
            (17, 123, 123, ntp[..47].to_vec(), None),
            (17, 50000, 443, quic[..40].to_vec(), Some(app::QUIC)),
            (17, 50000, 9999, quic.clone(), Some(app::QUIC)),
            (17, 50000, 9999, quic[..1199].to_vec(), None),
            (17, 50000, 443, vec![0xc3, 0, 0, 0, 7, 8, 0, 0], None),
            (17, 50000, 443, vec![0x43, 0, 0, 0, 1, 8, 0, 0], None),
        ];
        for (proto, sport, dport, payload, expected) in cases {
            assert_eq!(
                detect(proto, sport, dport, &payload),
                expected,
                "{} {}->{} {:?}",
                proto,
                sport,
                dport,
                String::from_utf8_lossy(&payload[..payload.len().min(20)])
            );
        }
    }

    #[test]
    fn hellos_give_sni_and_real_versions_and_http_gives_the_host() {
        assert_eq!(
            tls_hello(&client_hello("WWW.Example.com")),
            Some(Hello::Client(Some("www.example.com".into()), 0x0304))
        );
        assert_eq!(
            tls_hello(&server_hello(Some(0x0304))),
            Some(Hello::Server(0x0304))
        );
        assert_eq!(tls_hello(&server_hello(None)), Some(Hello::Server(0x0303)));
        // A hello cut before its extensions still counts, without an SNI.
        assert_eq!(
            tls_hello(&client_hello("a.example")[..50]),
            Some(Hello::Client(None, 0x0303))
        );
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nAccept: */*\r\nhOsT:  Api.Example.org:8080 \r\n\r\n"),
            Some("api.example.org:8080".into())
        );
        assert_eq!(http_host(b"GET / HTTP/1.1\r\n\r\nHost: body\r\n"), None);
        assert_eq!(http_host(b"GET / HTTP/1.1\r\nHost: cut-her"), None);
        assert_eq!(http_request_method(b"DELETE /a"), Some(4));
        assert_eq!(http_request_method(b"GET \x01"), None);
    }

    #[test]
    fn payload_packets_count_under_the_flow_application_and_acks_do_not() {
        let mut a = ProtoId::init(Params::default()).unwrap();
        // SYN, then a request, a pure ACK and a response.
        feed(&mut a, &frame(6, 1, 2, 40000, 80, 0x02, b""));
        let req = tcp(
            1,
            2,
            40000,
            80,
            b"GET /a HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
        );
        feed(&mut a, &req);
        let ack = frame(6, 2, 1, 80, 40000, 0x10, b"");
        feed(&mut a, &ack);
        let resp = tcp(
            2,
            1,
            80,
            40000,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        feed(&mut a, &resp);
        feed(&mut a, &req);
        let r = a.results();
        let len = |p: &(PacketHeader, Vec<u8>)| p.1.len() as u64;
        assert_eq!(app_of(&r, "http"), (3, 2 * len(&req) + len(&resp), 1));
        assert_eq!(r.l4["tcp"].packets, 5);
        assert_eq!(r.l3["ipv4"].packets, 5);
        assert_eq!((r.http.requests, r.http.responses), (2, 1));
        assert_eq!(r.http.hosts[0].host, "www.example.com");
        assert_eq!(r.http.hosts[0].methods["GET"], 2);
        assert_eq!(r.active_flows, 1);
    }

    #[test]
    fn flows_move_from_unknown_when_identified_late_and_give_up_after_tries() {
        let mut a = ProtoId::init(Params {
            inspect_packets: 2,
            ..Params::default()
        })
        .unwrap();
        // A banner that is not a known protocol, then an SSH banner.
        feed(&mut a, &tcp(1, 2, 40000, 2222, b"hello\r\n"));
        assert_eq!(app_of(&a.results(), "unknown").2, 1);
        feed(&mut a, &tcp(2, 1, 2222, 40000, b"SSH-2.0-x\r\n"));
        let r = a.results();
        assert_eq!(app_of(&r, "unknown").0, 1, "packets before stay unknown");
        assert_eq!(app_of(&r, "unknown").2, 0);
        assert_eq!((app_of(&r, "ssh").0, app_of(&r, "ssh").2), (1, 1));
        // Another flow: two misses and it is given up for good.
        for _ in 0..2 {
            feed(&mut a, &tcp(1, 3, 40001, 2222, b"nope"));
        }
        feed(&mut a, &tcp(1, 3, 40001, 2222, b"SSH-2.0-late\r\n"));
        let r = a.results();
        assert_eq!(app_of(&r, "unknown").0, 4);
        assert_eq!(app_of(&r, "unknown").2, 1);
        assert_eq!(app_of(&r, "ssh").0, 1);
    }

    #[test]
    fn refused_flows_still_count_and_idle_flows_expire() {
        let mut a = ProtoId::init(Params {
            max_flows: 1,
            idle_timeout_s: 1,
            ..Params::default()
        })
        .unwrap();
        let mut p = udp(
            1,
            2,
            5000,
            53,
            &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
        );
        feed(&mut a, &p);
        let q = udp(1, 3, 5001, 123, &[0x23; 48]);
        feed(&mut a, &q); // refused: the table is full
        let mut icmp = frame(1, 1, 4, 0, 0, 0, &[8, 0, 0, 0]);
        icmp.0.src_port = 0;
        feed(&mut a, &icmp); // refused too, but still ICMP
        let r = a.results();
        assert_eq!(r.refused_packets, 2);
        assert_eq!((r.l4["udp"].packets, r.l4["icmp"].packets), (2, 1));
        assert_eq!(app_of(&r, "dns"), (1, p.1.len() as u64, 1));
        assert_eq!(app_of(&r, "unknown"), (1, q.1.len() as u64, 0));
        assert_eq!(app_of(&r, "icmp").0, 1);
        assert_eq!(app_of(&r, "ntp").0, 0);
        // Two seconds later the DNS flow is idle: expired at tick.
        p.0.ts_ns = 2_000_000_000;
        p.0.src_port = 5002;
        feed(&mut a, &p);
        a.tick(0);
        let r = a.results();
        assert_eq!((r.active_flows, r.expired_flows), (0, 1));
        assert_eq!(r.refused_packets, 3);
    }

    #[test]
    fn tls_handshakes_are_listed_by_sni_and_version() {
        let mut a = ProtoId::init(Params {
            top_n: 1,
            max_names: 2,
            ..Params::default()
        })
        .unwrap();
        for (i, sni) in ["b.example", "a.example", "a.example", "c.example"]
            .iter()
            .enumerate()
        {
            let port = 40000 + i as u16;
            feed(&mut a, &tcp(1, 2, port, 443, &client_hello(sni)));
            feed(&mut a, &tcp(2, 1, 443, port, &server_hello(Some(0x0304))));
        }
        let r = a.results();
        assert_eq!((r.tls.client_hellos, r.tls.server_hellos), (4, 4));
        assert_eq!(r.tls.versions["TLS 1.3"], 4);
        assert_eq!(
            r.tls.snis,
            vec![SniOut {
                sni: "a.example".into(),
                version: "TLS 1.3".into(),
                handshakes: 2
            }]
        );
        assert_eq!(
            r.tls.untracked_hellos, 1,
            "c.example came with the table full"
        );
        assert_eq!(app_of(&r, "tls"), (8, app_of(&r, "tls").1, 4));
    }

    #[test]
    fn snapshot_restores_everything_and_bad_params_are_named() {
        let mut a = ProtoId::init(Params::default()).unwrap();
        feed(&mut a, &tcp(1, 2, 40000, 443, &client_hello("x.example")));
        feed(
            &mut a,
            &tcp(1, 2, 40000, 80, b"POST /p HTTP/1.1\r\nHost: h\r\n\r\n"),
        );
        feed(&mut a, &udp(1, 2, 68, 67, &dhcp()));
        let saved = a.snapshot().unwrap();
        let mut b = ProtoId::init(Params::default()).unwrap();
        b.restore(&saved).unwrap();
        assert_eq!(b.results(), a.results());
        assert_eq!(b.flows, a.flows);
        assert!(b.restore(b"\x01\x02").is_err());
        for (params, needle) in [
            (
                Params {
                    top_n: 5000,
                    ..Params::default()
                },
                "top_n = 5000",
            ),
            (
                Params {
                    max_flows: 0,
                    ..Params::default()
                },
                "max_flows = 0",
            ),
            (
                Params {
                    inspect_packets: 65,
                    ..Params::default()
                },
                "inspect_packets = 65",
            ),
            (
                Params {
                    max_names: 0,
                    ..Params::default()
                },
                "max_names = 0",
            ),
        ] {
            let err = a.configure(params).err().unwrap();
            assert!(err.contains(needle), "{}", err);
        }
        let err = tm_sdk::decode_params::<Params>(&[0x81, 0xa5, b'b', b'o', b'g', b'u', b's', 1])
            .err()
            .unwrap();
        assert!(err.contains("bogus"), "{}", err);
        // {"top_n": "x"}: a wrong type names the field too.
        let mut wrong = vec![0x81, 0xa5];
        wrong.extend_from_slice(b"top_n");
        wrong.extend_from_slice(&[0xa1, b'x']);
        let err = tm_sdk::decode_params::<Params>(&wrong).err().unwrap();
        assert!(err.contains("top_n: invalid type"), "{}", err);
        // {"max_names": 7} alone: the other fields keep their defaults.
        let mut one = vec![0x81, 0xa9];
        one.extend_from_slice(b"max_names");
        one.push(7);
        let p = tm_sdk::decode_params::<Params>(&one).unwrap();
        assert_eq!((p.max_names, p.top_n, p.inspect_packets), (7, 10, 4));
        assert_eq!(a.results().packets, 3, "a refused configure keeps state");
    }

    /// Random and cut payloads at every length, with offsets pointing
    /// anywhere: no panic (a trap in WebAssembly).
    #[test]
    fn malformed_and_truncated_packets_never_panic() {
        let mut a = ProtoId::init(Params {
            inspect_packets: 64,
            ..Params::default()
        })
        .unwrap();
        let mut x: u32 = 0x1234_5678;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let seeds = [
            client_hello("fuzz.example"),
            server_hello(Some(0x0304)),
            b"GET / HTTP/1.1\r\nHost: fuzz\r\n\r\n".to_vec(),
            dhcp(),
            vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 30],
            vec![0, 12, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        ];
        for (s, seed) in seeds.iter().enumerate() {
            for cut in 0..=seed.len() {
                for (proto, port) in [(6u8, [443u16, 80, 53, 25]), (17, [53, 67, 123, 443])] {
                    for &dport in &port {
                        let mut payload = seed[..cut].to_vec();
                        if cut > 0 && next() % 2 == 0 {
                            let at = next() as usize % cut;
                            payload[at] ^= next() as u8 | 1;
                        }
                        let (mut h, f) =
                            frame(proto, 1, 2, 40000 + s as u16, dport, 0x18, &payload);
                        // Claim the original length on the wire.
                        h.wire_len = (f.len() + seed.len() - cut) as u32;
                        feed(&mut a, &(h, f.clone()));
                        // The same with wild offsets and a short capture.
                        let keep = next() as usize % (f.len() + 1);
                        let mut h2 = h;
                        h2.cap_len = keep as u32;
                        h2.l3_offset = next() as u16;
                        h2.l4_offset = if next() % 3 == 0 {
                            NO_OFFSET
                        } else {
                            next() as u16 % 80
                        };
                        h2.payload_offset = next() as u16 % 100;
                        a.on_packet(&Packet {
                            header: h2,
                            data: &f[..keep],
                        });
                    }
                }
            }
        }
        for hello in seeds.iter() {
            for cut in 0..hello.len() {
                let _ = tls_hello(&hello[..cut]);
                let _ = http_host(&hello[..cut]);
            }
        }
        let r = a.results();
        let l3: u64 = r.l3.values().map(|t| t.packets).sum();
        assert_eq!(l3, r.packets);
    }
}
