//! What a payload is: the application protocol rules (with port hints),
//! and the HTTP request, host and TLS hello facts read from payloads; the
//! application, method and TLS version indices they are counted by.

// --- names ----------------------------------------------------------------

/// Application protocols, as indices into [`APP_NAMES`].
pub(crate) mod app {
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

pub(crate) const APP_NAMES: [&str; app::COUNT] = [
    "http", "tls", "dns", "ssh", "quic", "smtp", "dhcp", "ntp", "icmp", "icmpv6", "unknown",
];

/// HTTP request methods recognised (each followed by a space).
pub(crate) const METHODS: [&str; 9] = [
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
pub(crate) const TLS_OTHER: usize = TLS_VERSIONS.len();

pub(crate) fn tls_version_index(v: u16) -> usize {
    TLS_VERSIONS
        .iter()
        .position(|(n, _)| *n == v)
        .unwrap_or(TLS_OTHER)
}

pub(crate) fn tls_version_name(i: usize) -> &'static str {
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
pub(crate) fn detect(proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Option<u8> {
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
pub(crate) fn http_request_method(b: &[u8]) -> Option<usize> {
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
pub(crate) fn http_response(b: &[u8]) -> bool {
    if !(b.starts_with(b"HTTP/1.1 ") || b.starts_with(b"HTTP/1.0 ")) {
        return false;
    }
    part(b, 9, 3).iter().all(u8::is_ascii_digit)
}

/// The `Host` header of a request, if its line was captured whole.
pub(crate) fn http_host(b: &[u8]) -> Option<String> {
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
pub(crate) enum Hello {
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
pub(crate) fn tls_hello(b: &[u8]) -> Option<Hello> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello record with SNI and supported_versions (GREASE first).
    pub(crate) fn client_hello(sni: &str) -> Vec<u8> {
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

    pub(crate) fn server_hello(version: Option<u16>) -> Vec<u8> {
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

    pub(crate) fn dhcp() -> Vec<u8> {
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
}
