//! Application-protocol payloads (HTTP, TLS, DNS, SSH, QUIC, SMTP, DHCP, NTP, ICMP) and a capture holding them all, for proto-id.
//!
//! Every builder writes the protocol's real wire format (a TLS ClientHello
//! with SNI and supported_versions, a QUIC v1 Initial long header, a DHCP
//! DISCOVER with the magic cookie, …), so other tools (tshark) dissect them
//! the same way. [`mix`] is a deterministic capture of complete
//! conversations (TCP handshakes, data, pure ACKs, closes) with its ground
//! truth ([`Truth`]) tallied while the frames are generated: each frame's
//! network and transport protocol and the application protocol of the
//! conversation it belongs to, as the generator chose them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Frame, Timeline, flags, ip_step, mac, tcp_segment, udp_datagram};

// --- payload builders ---------------------------------------------------

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put24(out: &mut Vec<u8>, v: usize) {
    let v = u32::try_from(v).expect("24-bit length");
    assert!(v < 1 << 24, "24-bit length");
    out.extend_from_slice(&v.to_be_bytes()[1..]);
}

fn len16(v: usize) -> u16 {
    u16::try_from(v).expect("16-bit length")
}

/// A deterministic byte stream (xorshift32), for random-looking fields
/// (TLS randoms, encrypted records, QUIC payloads).
#[derive(Debug, Clone)]
pub struct Noise(u32);

impl Noise {
    /// A stream from `seed` (0 is replaced by a fixed non-zero seed).
    #[must_use]
    pub fn new(seed: u32) -> Noise {
        Noise(if seed == 0 { 0x9e37_79b9 } else { seed })
    }

    /// The next 32 bits.
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u32() as u8).collect()
    }
}

/// An HTTP/1.1 request with a `Host` header; `body` (if not empty) follows
/// with a `Content-Length`.
#[must_use]
pub fn http_request(method: &str, target: &str, host: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pcapgen/1.0\r\nAccept: */*\r\n"
    );
    if !body.is_empty() {
        out += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    out += "\r\n";
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// An HTTP/1.1 response with a `Content-Length` body (headers and body in
/// one piece, as one TCP segment carries them).
#[must_use]
pub fn http_response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: pcapgen\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// TLS versions as on the wire.
pub mod tls_version {
    /// TLS 1.0 (the legacy record version of ClientHellos).
    pub const TLS10: u16 = 0x0301;
    /// TLS 1.2.
    pub const TLS12: u16 = 0x0303;
    /// TLS 1.3.
    pub const TLS13: u16 = 0x0304;
}

/// The name proto-id and tshark give a TLS version.
#[must_use]
pub fn tls_version_name(v: u16) -> String {
    match v {
        0x0300 => "SSL 3.0".into(),
        0x0301 => "TLS 1.0".into(),
        0x0302 => "TLS 1.1".into(),
        0x0303 => "TLS 1.2".into(),
        0x0304 => "TLS 1.3".into(),
        _ => format!("0x{v:04x}"),
    }
}

/// A TLS record: content type, record version, length, body.
#[must_use]
pub fn tls_record(content_type: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type];
    put16(&mut out, version);
    put16(&mut out, len16(body.len()));
    out.extend_from_slice(body);
    out
}

fn tls_handshake(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    put24(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn tls_extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    put16(out, kind);
    put16(out, len16(data.len()));
    out.extend_from_slice(data);
}

/// A ClientHello handshake record (record version TLS 1.0, hello version
/// TLS 1.2). With `versions` empty it is a TLS 1.2 hello without
/// supported_versions; otherwise it offers `versions` in a
/// supported_versions extension (43) and adds an X25519 key share. `sni`
/// goes in a server_name extension (0).
#[must_use]
pub fn tls_client_hello(sni: Option<&str>, versions: &[u16], noise: &mut Noise) -> Vec<u8> {
    let mut hello = Vec::new();
    put16(&mut hello, tls_version::TLS12);
    hello.extend(noise.bytes(32)); // random
    hello.push(32);
    hello.extend(noise.bytes(32)); // legacy session id
    let suites: &[u16] = if versions.is_empty() {
        &[0xc02f, 0xc030, 0xc02b, 0xc02c, 0x009e, 0x00ff]
    } else {
        &[0x1301, 0x1302, 0x1303, 0xc02f, 0xc030, 0xc02b]
    };
    put16(&mut hello, len16(suites.len() * 2));
    for s in suites {
        put16(&mut hello, *s);
    }
    hello.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let mut list = vec![0u8]; // host_name
        put16(&mut list, len16(name.len()));
        list.extend_from_slice(name.as_bytes());
        let mut data = Vec::new();
        put16(&mut data, len16(list.len()));
        data.extend(list);
        tls_extension(&mut ext, 0, &data);
    }
    tls_extension(&mut ext, 10, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // groups
    tls_extension(&mut ext, 11, &[1, 0]); // EC point formats
    tls_extension(
        &mut ext,
        13,
        &[0, 8, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x01],
    ); // signature algorithms
    if !versions.is_empty() {
        let mut data = vec![u8::try_from(versions.len() * 2).expect("few versions")];
        for v in versions {
            put16(&mut data, *v);
        }
        tls_extension(&mut ext, 43, &data);
        let mut share = Vec::new();
        put16(&mut share, 36);
        put16(&mut share, 0x001d);
        put16(&mut share, 32);
        share.extend(noise.bytes(32));
        tls_extension(&mut ext, 51, &share); // key_share
        tls_extension(&mut ext, 45, &[1, 1]); // psk modes
    }
    put16(&mut hello, len16(ext.len()));
    hello.extend(ext);
    tls_record(22, tls_version::TLS10, &tls_handshake(1, &hello))
}

/// A ServerHello handshake record choosing `version`: TLS 1.3 is told in a
/// supported_versions extension (the hello says TLS 1.2), older versions in
/// the hello itself.
#[must_use]
pub fn tls_server_hello(version: u16, noise: &mut Noise) -> Vec<u8> {
    let tls13 = version == tls_version::TLS13;
    let mut hello = Vec::new();
    put16(&mut hello, if tls13 { tls_version::TLS12 } else { version });
    hello.extend(noise.bytes(32));
    hello.push(32);
    hello.extend(noise.bytes(32));
    put16(&mut hello, if tls13 { 0x1301 } else { 0xc02f });
    hello.push(0);
    let mut ext = Vec::new();
    if tls13 {
        tls_extension(&mut ext, 43, &version.to_be_bytes());
        let mut share = Vec::new();
        put16(&mut share, 0x001d);
        put16(&mut share, 32);
        share.extend(noise.bytes(32));
        tls_extension(&mut ext, 51, &share);
    } else {
        tls_extension(&mut ext, 0xff01, &[0]); // renegotiation_info
    }
    put16(&mut hello, len16(ext.len()));
    hello.extend(ext);
    tls_record(22, tls_version::TLS12, &tls_handshake(2, &hello))
}

/// The rest of a TLS 1.2 server flight after the ServerHello:
/// ServerHelloDone.
#[must_use]
pub fn tls12_server_hello_done() -> Vec<u8> {
    tls_record(22, tls_version::TLS12, &tls_handshake(14, &[]))
}

/// A TLS 1.2 client's second flight: ClientKeyExchange (an uncompressed
/// EC point), ChangeCipherSpec, and the encrypted Finished.
#[must_use]
pub fn tls12_client_finish(noise: &mut Noise) -> Vec<u8> {
    let mut point = vec![65, 4];
    point.extend(noise.bytes(64));
    let mut out = tls_record(22, tls_version::TLS12, &tls_handshake(16, &point));
    out.extend(tls_change_cipher_spec());
    out.extend(tls_record(22, tls_version::TLS12, &noise.bytes(40)));
    out
}

/// ChangeCipherSpec record.
#[must_use]
pub fn tls_change_cipher_spec() -> Vec<u8> {
    tls_record(20, tls_version::TLS12, &[1])
}

/// An application-data record of `len` encrypted-looking bytes.
#[must_use]
pub fn tls_application_data(len: usize, noise: &mut Noise) -> Vec<u8> {
    tls_record(23, tls_version::TLS12, &noise.bytes(len))
}

fn dns_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).expect("label of at most 63 bytes"));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// A recursive DNS query for the A record of `name`.
#[must_use]
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put16(&mut out, id);
    put16(&mut out, 0x0100); // RD
    for n in [1, 0, 0, 0] {
        put16(&mut out, n);
    }
    dns_name(&mut out, name);
    put16(&mut out, 1); // A
    put16(&mut out, 1); // IN
    out
}

/// The answer to [`dns_query`]: one A record (name compressed to the
/// question).
#[must_use]
pub fn dns_response(id: u16, name: &str, addr: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::new();
    put16(&mut out, id);
    put16(&mut out, 0x8180); // QR RD RA, NOERROR
    for n in [1, 1, 0, 0] {
        put16(&mut out, n);
    }
    dns_name(&mut out, name);
    put16(&mut out, 1);
    put16(&mut out, 1);
    out.extend_from_slice(&[0xc0, 12]);
    put16(&mut out, 1);
    put16(&mut out, 1);
    out.extend_from_slice(&300u32.to_be_bytes());
    put16(&mut out, 4);
    out.extend_from_slice(&addr.octets());
    out
}

/// A DNS message as TCP carries it: a 2-byte length first.
#[must_use]
pub fn dns_over_tcp(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put16(&mut out, len16(message.len()));
    out.extend_from_slice(message);
    out
}

/// The SSH identification line.
#[must_use]
pub fn ssh_banner(software: &str) -> Vec<u8> {
    format!("SSH-2.0-{software}\r\n").into_bytes()
}

/// An SSH binary packet holding a KEXINIT (message 20): length, padding
/// length, payload, padding to a multiple of 8.
#[must_use]
pub fn ssh_kexinit(noise: &mut Noise) -> Vec<u8> {
    let mut payload = vec![20];
    payload.extend(noise.bytes(16)); // cookie
    let lists = [
        "curve25519-sha256,ecdh-sha2-nistp256",
        "ssh-ed25519,rsa-sha2-512",
        "chacha20-poly1305@openssh.com,aes128-ctr",
        "chacha20-poly1305@openssh.com,aes128-ctr",
        "hmac-sha2-256,hmac-sha1",
        "hmac-sha2-256,hmac-sha1",
        "none",
        "none",
        "",
        "",
    ];
    for l in lists {
        payload.extend_from_slice(&u32::try_from(l.len()).expect("short").to_be_bytes());
        payload.extend_from_slice(l.as_bytes());
    }
    payload.push(0); // first_kex_packet_follows
    payload.extend_from_slice(&0u32.to_be_bytes());
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let packet_len = 1 + payload.len() + padding;
    let mut out = u32::try_from(packet_len)
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.push(u8::try_from(padding).expect("small"));
    out.extend(payload);
    out.extend(std::iter::repeat_n(0, padding));
    out
}

/// QUIC versions.
pub mod quic_version {
    /// QUIC version 1 (RFC 9000).
    pub const V1: u32 = 1;
}

/// QUIC long-header packet types (version 1 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicLong {
    /// Initial (carries a token length).
    Initial,
    /// Handshake.
    Handshake,
}

fn varint(out: &mut Vec<u8>, v: u64) {
    if v < 64 {
        out.push(v as u8);
    } else if v < 16_384 {
        put16(out, 0x4000 | v as u16);
    } else {
        assert!(v < 1 << 30, "varint too large for this builder");
        out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes());
    }
}

/// A QUIC long-header packet of exactly `size` bytes: first byte (fixed
/// bit set, type, 4-byte packet number), version, DCID, SCID, token length
/// (Initial only, 0), Length (2-byte varint) and a 4-byte packet number
/// followed by protected payload (random bytes: the payload cannot be
/// decrypted, as in any capture without keys).
#[must_use]
pub fn quic_long(
    kind: QuicLong,
    version: u32,
    dcid: &[u8],
    scid: &[u8],
    size: usize,
    noise: &mut Noise,
) -> Vec<u8> {
    let type_bits = match kind {
        QuicLong::Initial => 0,
        QuicLong::Handshake => 2,
    };
    let mut out = vec![0xc0 | (type_bits << 4) | 0x03];
    out.extend_from_slice(&version.to_be_bytes());
    out.push(u8::try_from(dcid.len()).expect("cid of at most 20 bytes"));
    out.extend_from_slice(dcid);
    out.push(u8::try_from(scid.len()).expect("cid of at most 20 bytes"));
    out.extend_from_slice(scid);
    if kind == QuicLong::Initial {
        varint(&mut out, 0);
    }
    let rest = size
        .checked_sub(out.len() + 2)
        .expect("size leaves room for the header");
    assert!(rest >= 20, "size leaves room for a packet number and a tag");
    varint(&mut out, rest as u64);
    assert!((64..16_384).contains(&rest), "2-byte Length");
    out.extend(noise.bytes(rest));
    out
}

/// A QUIC short-header (1-RTT) packet: first byte 0x40 | key phase and
/// packet number bits, the DCID, then `len` protected bytes.
#[must_use]
pub fn quic_short(dcid: &[u8], len: usize, noise: &mut Noise) -> Vec<u8> {
    let mut out = vec![0x40 | (noise.next_u32() as u8 & 0x07)];
    out.extend_from_slice(dcid);
    out.extend(noise.bytes(len));
    out
}

/// DHCP message types (option 53).
pub mod dhcp_type {
    /// DHCPDISCOVER
    pub const DISCOVER: u8 = 1;
    /// DHCPOFFER
    pub const OFFER: u8 = 2;
    /// DHCPREQUEST
    pub const REQUEST: u8 = 3;
    /// DHCPACK
    pub const ACK: u8 = 5;
}

/// The DHCP magic cookie, at offset 236 of a BOOTP message.
pub const DHCP_MAGIC: [u8; 4] = [0x63, 0x82, 0x53, 0x63];

/// A DHCP message: BOOTP fixed part (236 bytes), the magic cookie and
/// options (message type, and for the server's replies server id, lease
/// time, mask and router; for the client's the requested parameters), padded
/// to the BOOTP minimum of 300 bytes.
#[must_use]
pub fn dhcp_message(
    msg_type: u8,
    xid: u32,
    client_mac: [u8; 6],
    yiaddr: Ipv4Addr,
    server: Ipv4Addr,
) -> Vec<u8> {
    let reply = matches!(msg_type, dhcp_type::OFFER | dhcp_type::ACK);
    let mut out = vec![if reply { 2 } else { 1 }, 1, 6, 0];
    out.extend_from_slice(&xid.to_be_bytes());
    put16(&mut out, 0); // secs
    put16(&mut out, 0x8000); // broadcast flag
    out.extend_from_slice(&[0; 4]); // ciaddr
    out.extend_from_slice(&yiaddr.octets());
    out.extend_from_slice(&if reply { server.octets() } else { [0; 4] });
    out.extend_from_slice(&[0; 4]); // giaddr
    out.extend_from_slice(&client_mac);
    out.extend_from_slice(&[0; 10]);
    out.extend_from_slice(&[0; 64 + 128]); // sname, file
    debug_assert_eq!(out.len(), 236);
    out.extend_from_slice(&DHCP_MAGIC);
    out.extend_from_slice(&[53, 1, msg_type]);
    if reply {
        out.extend_from_slice(&[54, 4]);
        out.extend_from_slice(&server.octets());
        out.extend_from_slice(&[51, 4, 0, 0, 0x0e, 0x10]); // lease 3600 s
        out.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        out.extend_from_slice(&[3, 4]);
        out.extend_from_slice(&server.octets());
    } else {
        out.extend_from_slice(&[61, 7, 1]);
        out.extend_from_slice(&client_mac);
        if msg_type == dhcp_type::REQUEST {
            out.extend_from_slice(&[50, 4]);
            out.extend_from_slice(&yiaddr.octets());
            out.extend_from_slice(&[54, 4]);
            out.extend_from_slice(&server.octets());
        }
        out.extend_from_slice(&[55, 4, 1, 3, 6, 15]);
    }
    out.push(255);
    if out.len() < 300 {
        out.resize(300, 0);
    }
    out
}

/// An NTPv4 packet (48 bytes): `mode` 3 for a client request, 4 for a
/// server reply (stratum 2, reference id and timestamps filled).
#[must_use]
pub fn ntp_packet(mode: u8, noise: &mut Noise) -> Vec<u8> {
    let server = mode == 4;
    let mut out = vec![(4 << 3) | mode, if server { 2 } else { 0 }, 6, 0xe9];
    out.extend_from_slice(&if server { [0, 0, 0, 0x20] } else { [0; 4] }); // root delay
    out.extend_from_slice(&if server { [0, 0, 0, 0x40] } else { [0; 4] }); // root dispersion
    out.extend_from_slice(&if server { [192, 0, 2, 1] } else { [0; 4] }); // reference id
    // reference, origin, receive timestamps, then transmit.
    for i in 0..4 {
        if server || i == 3 {
            out.extend_from_slice(&0xeb00_0000_u32.wrapping_add(i).to_be_bytes());
            out.extend(noise.bytes(4));
        } else {
            out.extend_from_slice(&[0; 8]);
        }
    }
    out
}

/// An Ethernet ARP request (who has `target`? tell `sender`).
#[must_use]
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&mac(sender));
    out.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    out.extend_from_slice(&mac(sender));
    out.extend_from_slice(&sender.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target.octets());
    out
}

/// An ICMP echo request or reply over IPv4.
#[must_use]
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, reply: bool, id: u16, seq: u16) -> Vec<u8> {
    let step = ip_step(src.into(), dst.into());
    let b = if reply {
        step.icmpv4_echo_reply(id, seq)
    } else {
        step.icmpv4_echo_request(id, seq)
    };
    let payload: Vec<u8> = (0..56u8).collect();
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, &payload).expect("writing to a Vec");
    out
}

/// An ICMPv6 echo request or reply.
#[must_use]
pub fn icmpv6_echo(src: Ipv6Addr, dst: Ipv6Addr, reply: bool, id: u16, seq: u16) -> Vec<u8> {
    let step = ip_step(src.into(), dst.into());
    let b = if reply {
        step.icmpv6_echo_reply(id, seq)
    } else {
        step.icmpv6_echo_request(id, seq)
    };
    let payload: Vec<u8> = (0..56u8).collect();
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, &payload).expect("writing to a Vec");
    out
}

// --- ground truth -------------------------------------------------------

/// Packets, wire bytes and bidirectional flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
    /// Bidirectional 5-tuples (application protocols only).
    pub flows: u64,
}

/// What [`mix`] generated, counted as it was generated.
///
/// Network (`l3`: ipv4, ipv6, other) and transport (`l4`: tcp, udp, icmp,
/// icmpv6) are per frame. `app` counts, per application protocol, the
/// frames that carry TCP/UDP payload in that protocol's conversations, every
/// ICMP/ICMPv6 frame (as `icmp`, `icmpv6`), and the payload frames of
/// conversations in no known protocol as `unknown`; frames without payload
/// (handshakes, pure ACKs, FINs) and ARP count under no application.
/// `flows` counts distinct bidirectional 5-tuples (ports 0 for ICMP) among
/// those frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    /// All frames.
    pub packets: u64,
    /// Their wire bytes.
    pub bytes: u64,
    /// Per network protocol (`flows` is 0).
    pub l3: BTreeMap<&'static str, Tally>,
    /// Per transport protocol (`flows` is 0).
    pub l4: BTreeMap<&'static str, Tally>,
    /// Per application protocol.
    pub app: BTreeMap<&'static str, Tally>,
    /// HTTP requests per `Host`.
    pub http_hosts: BTreeMap<String, u64>,
    /// HTTP requests per method.
    pub http_methods: BTreeMap<String, u64>,
    /// HTTP responses.
    pub http_responses: u64,
    /// ClientHellos per (SNI, highest version offered).
    pub tls_hellos: BTreeMap<(String, String), u64>,
    /// ServerHellos per version chosen.
    pub tls_versions: BTreeMap<String, u64>,
}

/// A bidirectional 5-tuple as the generator sees it: protocol and the two
/// endpoints, lower first.
type FlowId = (u8, (IpAddr, u16), (IpAddr, u16));

fn flow_id(proto: u8, a: (IpAddr, u16), b: (IpAddr, u16)) -> FlowId {
    if a <= b { (proto, a, b) } else { (proto, b, a) }
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

/// The generator: a timeline and the truth tallied as frames are pushed.
struct Gen {
    tl: Timeline,
    truth: Truth,
    flows: BTreeSet<(&'static str, FlowId)>,
    noise: Noise,
}

impl Gen {
    fn push(
        &mut self,
        data: Vec<u8>,
        l3: &'static str,
        l4: Option<&'static str>,
        app: Option<(&'static str, FlowId)>,
    ) {
        let bytes = data.len() as u64;
        let t = &mut self.truth;
        t.packets += 1;
        t.bytes += bytes;
        let add = |m: &mut BTreeMap<&'static str, Tally>, k: &'static str| {
            let e = m.entry(k).or_default();
            e.packets += 1;
            e.bytes += bytes;
        };
        add(&mut t.l3, l3);
        if let Some(l4) = l4 {
            add(&mut t.l4, l4);
        }
        if let Some((name, flow)) = app {
            add(&mut t.app, name);
            if self.flows.insert((name, flow)) {
                t.app.entry(name).or_default().flows += 1;
            }
        }
        self.tl.push(data);
    }

    fn udp(&mut self, app: &'static str, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let id = flow_id(17, (src.ip(), src.port()), (dst.ip(), dst.port()));
        let app = (!payload.is_empty()).then_some((app, id));
        self.push(
            udp_datagram(src, dst, payload),
            family(src.ip()),
            Some("udp"),
            app,
        );
    }
}

/// One TCP connection: sequence numbers kept right in both directions.
struct Conn {
    app: &'static str,
    client: SocketAddr,
    server: SocketAddr,
    /// Next sequence number of the client, then of the server.
    seq: [u32; 2],
}

const WINDOW: u16 = 64_240;

impl Conn {
    /// Three-way handshake.
    fn open(g: &mut Gen, app: &'static str, client: SocketAddr, server: SocketAddr) -> Conn {
        let isn = [g.noise.next_u32(), g.noise.next_u32()];
        let mut c = Conn {
            app,
            client,
            server,
            seq: isn,
        };
        c.segment(g, 0, isn[0], 0, flags::SYN, &[]);
        c.segment(g, 1, isn[1], isn[0] + 1, flags::SYN | flags::ACK, &[]);
        c.seq = [isn[0].wrapping_add(1), isn[1].wrapping_add(1)];
        c.segment(g, 0, c.seq[0], c.seq[1], flags::ACK, &[]);
        c
    }

    fn segment(&self, g: &mut Gen, side: usize, seq: u32, ack: u32, bits: u8, payload: &[u8]) {
        let (src, dst) = if side == 0 {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        let id = flow_id(6, (src.ip(), src.port()), (dst.ip(), dst.port()));
        let app = (!payload.is_empty()).then_some((self.app, id));
        g.push(
            tcp_segment(src, dst, seq, ack, bits, WINDOW, payload),
            family(src.ip()),
            Some("tcp"),
            app,
        );
    }

    /// Data from the client (`side` 0) or the server (1), PSH|ACK.
    fn send(&mut self, g: &mut Gen, side: usize, payload: &[u8]) {
        let (seq, ack) = (self.seq[side], self.seq[1 - side]);
        self.segment(g, side, seq, ack, flags::PSH | flags::ACK, payload);
        self.seq[side] = seq.wrapping_add(payload.len() as u32);
    }

    /// A pure ACK from `side`.
    fn ack(&mut self, g: &mut Gen, side: usize) {
        let (seq, ack) = (self.seq[side], self.seq[1 - side]);
        self.segment(g, side, seq, ack, flags::ACK, &[]);
    }

    /// FIN from the client, FIN from the server, last ACK.
    fn close(mut self, g: &mut Gen) {
        for side in [0, 1] {
            let (seq, ack) = (self.seq[side], self.seq[1 - side]);
            self.segment(g, side, seq, ack, flags::FIN | flags::ACK, &[]);
            self.seq[side] = seq.wrapping_add(1);
        }
        self.ack(g, 0);
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(a, b, c, d).into(), port)
}

fn v6(last: u16, port: u16) -> SocketAddr {
    SocketAddr::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last).into(),
        port,
    )
}

fn http_conn(
    g: &mut Gen,
    client: SocketAddr,
    server: SocketAddr,
    exchanges: &[(&str, &str, &str)],
) {
    let mut c = Conn::open(g, "http", client, server);
    for (i, (method, target, host)) in exchanges.iter().enumerate() {
        let body: &[u8] = if *method == "POST" {
            b"{\"name\":\"widget\",\"count\":3}"
        } else {
            b""
        };
        c.send(g, 0, &http_request(method, target, host, body));
        *g.truth.http_hosts.entry((*host).into()).or_default() += 1;
        *g.truth.http_methods.entry((*method).into()).or_default() += 1;
        c.ack(g, 1);
        let response = match *method {
            "POST" => http_response(201, "Created", "application/json", b"{\"id\":17}"),
            "HEAD" => http_response(200, "OK", "text/html", b""),
            _ if target.ends_with(".css") => http_response(
                200,
                "OK",
                "text/css",
                b"body { font-family: sans-serif; margin: 0 auto; max-width: 40em; }\n",
            ),
            _ if i % 2 == 1 => http_response(404, "Not Found", "text/plain", b"not found\n"),
            _ => http_response(
                200,
                "OK",
                "text/html",
                format!(
                    "<!doctype html>\n<html><head><title>{host}</title></head>\n<body><p>{}</p></body></html>\n",
                    "Hello from pcapgen. ".repeat(8)
                )
                .as_bytes(),
            ),
        };
        // HEAD answers carry a Content-Length but no body; keep it 0 so
        // every tool reads the segment as one whole response.
        c.send(g, 1, &response);
        g.truth.http_responses += 1;
        c.ack(g, 0);
    }
    c.close(g);
}

fn tls_conn(g: &mut Gen, client: SocketAddr, server: SocketAddr, sni: &str, tls13: bool) {
    let mut c = Conn::open(g, "tls", client, server);
    let offered: &[u16] = if tls13 {
        &[tls_version::TLS13, tls_version::TLS12]
    } else {
        &[]
    };
    let hello = tls_client_hello(Some(sni), offered, &mut g.noise);
    c.send(g, 0, &hello);
    let (best, chosen) = if tls13 {
        (tls_version::TLS13, tls_version::TLS13)
    } else {
        (tls_version::TLS12, tls_version::TLS12)
    };
    *g.truth
        .tls_hellos
        .entry((sni.into(), tls_version_name(best)))
        .or_default() += 1;
    *g.truth
        .tls_versions
        .entry(tls_version_name(chosen))
        .or_default() += 1;
    c.ack(g, 1);
    let mut flight = tls_server_hello(chosen, &mut g.noise);
    if tls13 {
        flight.extend(tls_change_cipher_spec());
        // EncryptedExtensions, Certificate, CertificateVerify, Finished.
        flight.extend(tls_application_data(900, &mut g.noise));
        c.send(g, 1, &flight);
        let mut fin = tls_change_cipher_spec();
        fin.extend(tls_application_data(53, &mut g.noise));
        c.send(g, 0, &fin);
    } else {
        flight.extend(tls12_server_hello_done());
        c.send(g, 1, &flight);
        let fin = tls12_client_finish(&mut g.noise);
        c.send(g, 0, &fin);
        let mut fin = tls_change_cipher_spec();
        fin.extend(tls_record(22, tls_version::TLS12, &g.noise.bytes(40)));
        c.send(g, 1, &fin);
    }
    for i in 0..3 {
        let req = tls_application_data(120 + 10 * i, &mut g.noise);
        c.send(g, 0, &req);
        let resp = tls_application_data(1100 - 100 * i, &mut g.noise);
        c.send(g, 1, &resp);
        c.ack(g, 0);
    }
    c.close(g);
}

fn dns_exchange(
    g: &mut Gen,
    client: SocketAddr,
    server: SocketAddr,
    id: u16,
    name: &str,
    addr: Ipv4Addr,
) {
    g.udp("dns", client, server, &dns_query(id, name));
    g.udp("dns", server, client, &dns_response(id, name, addr));
}

fn quic_conn(g: &mut Gen, client: SocketAddr, server: SocketAddr) {
    let dcid = g.noise.bytes(8);
    let ccid = g.noise.bytes(8);
    let scid = g.noise.bytes(8);
    let v = quic_version::V1;
    let initial = quic_long(QuicLong::Initial, v, &dcid, &ccid, 1200, &mut g.noise);
    g.udp("quic", client, server, &initial);
    // The server's Initial and Handshake coalesced in one datagram.
    let mut flight = quic_long(QuicLong::Initial, v, &ccid, &scid, 160, &mut g.noise);
    flight.extend(quic_long(
        QuicLong::Handshake,
        v,
        &ccid,
        &scid,
        1040,
        &mut g.noise,
    ));
    g.udp("quic", server, client, &flight);
    let fin = quic_long(QuicLong::Handshake, v, &scid, &ccid, 90, &mut g.noise);
    g.udp("quic", client, server, &fin);
    for i in 0..3 {
        let req = quic_short(&scid, 60 + 20 * i, &mut g.noise);
        g.udp("quic", client, server, &req);
        let resp = quic_short(&ccid, 1000 - 100 * i, &mut g.noise);
        g.udp("quic", server, client, &resp);
    }
}

fn smtp_conn(g: &mut Gen, client: SocketAddr, server: SocketAddr, from: &str) {
    let mut c = Conn::open(g, "smtp", client, server);
    c.send(g, 1, b"220 mail.example.com ESMTP Postfix\r\n");
    c.send(g, 0, b"EHLO client.example.org\r\n");
    c.send(
        g,
        1,
        b"250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n",
    );
    c.send(g, 0, format!("MAIL FROM:<{from}>\r\n").as_bytes());
    c.send(g, 1, b"250 2.1.0 Ok\r\n");
    c.send(g, 0, b"QUIT\r\n");
    c.send(g, 1, b"221 2.0.0 Bye\r\n");
    c.ack(g, 0);
    c.close(g);
}

fn ssh_conn(g: &mut Gen, client: SocketAddr, server: SocketAddr) {
    let mut c = Conn::open(g, "ssh", client, server);
    c.send(g, 1, &ssh_banner("OpenSSH_9.2p1 Debian-2+deb12u3"));
    c.send(g, 0, &ssh_banner("OpenSSH_9.6"));
    let kex = ssh_kexinit(&mut g.noise);
    c.send(g, 1, &kex);
    let kex = ssh_kexinit(&mut g.noise);
    c.send(g, 0, &kex);
    c.ack(g, 1);
    c.close(g);
}

/// A deterministic capture with several conversations of each protocol,
/// frames 1 ms apart from `start_ns`, and its ground truth:
///
/// * HTTP/1.1 on ports 80 and 8080 (GET, POST with a body, HEAD; IPv4 and
///   IPv6; keep-alive with several requests per connection);
/// * TLS on 443: TLS 1.3 (twice to the same SNI, once over IPv6) and TLS 1.2
///   handshakes, then application data;
/// * DNS over UDP (IPv4 and IPv6) and one exchange over TCP;
/// * SSH (banners and KEXINITs), SMTP on 25 and 587, QUIC v1 on UDP 443
///   (Initial, coalesced Initial + Handshake, Handshake, 1-RTT);
/// * a DHCP DISCOVER/OFFER/REQUEST/ACK exchange, NTPv4 requests and replies;
/// * ICMP and ICMPv6 echo requests and replies;
/// * a TCP and a UDP conversation in no known protocol (`unknown`), and an
///   ARP request (neither IPv4 nor IPv6).
#[must_use]
pub fn mix(start_ns: u64) -> (Vec<Frame>, Truth) {
    let mut g = Gen {
        tl: Timeline::new(start_ns, 1_000_000),
        truth: Truth::default(),
        flows: BTreeSet::new(),
        noise: Noise::new(0x5eed_1234),
    };
    g.push(
        arp_request(Ipv4Addr::new(10, 1, 0, 10), Ipv4Addr::new(10, 1, 0, 1)),
        "other",
        None,
        None,
    );

    http_conn(
        &mut g,
        v4(10, 1, 0, 10, 49152),
        v4(10, 1, 0, 80, 80),
        &[
            ("GET", "/", "www.example.com"),
            ("GET", "/style.css", "www.example.com"),
        ],
    );
    http_conn(
        &mut g,
        v4(10, 1, 0, 11, 49153),
        v4(10, 1, 0, 80, 80),
        &[
            ("POST", "/api/v1/items", "api.example.org"),
            ("HEAD", "/health", "api.example.org"),
        ],
    );
    http_conn(
        &mut g,
        v4(10, 1, 0, 12, 49154),
        v4(10, 1, 0, 81, 8080),
        &[
            ("GET", "/index.html", "intranet.example.net:8080"),
            ("GET", "/missing", "intranet.example.net:8080"),
            ("GET", "/index.html", "intranet.example.net:8080"),
        ],
    );
    http_conn(
        &mut g,
        v6(0x10, 49155),
        v6(0x80, 80),
        &[("GET", "/", "v6.example.com")],
    );

    tls_conn(
        &mut g,
        v4(10, 1, 0, 10, 49200),
        v4(93, 184, 216, 34, 443),
        "example.com",
        true,
    );
    tls_conn(
        &mut g,
        v4(10, 1, 0, 11, 49201),
        v4(10, 1, 0, 43, 443),
        "cdn.example.net",
        false,
    );
    tls_conn(
        &mut g,
        v6(0x10, 49202),
        v6(0x443, 443),
        "ipv6.example.com",
        true,
    );
    tls_conn(
        &mut g,
        v4(10, 1, 0, 12, 49203),
        v4(93, 184, 216, 34, 443),
        "example.com",
        true,
    );

    let resolver = v4(10, 1, 0, 53, 53);
    dns_exchange(
        &mut g,
        v4(10, 1, 0, 10, 53001),
        resolver,
        0x1a2b,
        "www.example.com",
        Ipv4Addr::new(93, 184, 216, 34),
    );
    dns_exchange(
        &mut g,
        v4(10, 1, 0, 10, 53001),
        resolver,
        0x1a2c,
        "example.com",
        Ipv4Addr::new(93, 184, 216, 34),
    );
    dns_exchange(
        &mut g,
        v4(10, 1, 0, 11, 53002),
        resolver,
        0x0042,
        "cdn.example.net",
        Ipv4Addr::new(10, 1, 0, 43),
    );
    dns_exchange(
        &mut g,
        v6(0x10, 53003),
        v6(0x53, 53),
        0x7777,
        "v6.example.com",
        Ipv4Addr::new(192, 0, 2, 80),
    );
    {
        let mut c = Conn::open(&mut g, "dns", v4(10, 1, 0, 12, 49300), resolver);
        c.send(&mut g, 0, &dns_over_tcp(&dns_query(0x0bad, "example.org")));
        c.send(
            &mut g,
            1,
            &dns_over_tcp(&dns_response(
                0x0bad,
                "example.org",
                Ipv4Addr::new(192, 0, 2, 7),
            )),
        );
        c.ack(&mut g, 0);
        c.close(&mut g);
    }

    ssh_conn(&mut g, v4(10, 1, 0, 10, 49400), v4(10, 1, 0, 22, 22));
    ssh_conn(&mut g, v4(10, 1, 0, 12, 49401), v4(10, 1, 0, 22, 22));

    quic_conn(&mut g, v4(10, 1, 0, 10, 50000), v4(142, 250, 0, 1, 443));
    quic_conn(&mut g, v4(10, 1, 0, 11, 50001), v4(142, 250, 0, 1, 443));

    smtp_conn(
        &mut g,
        v4(10, 1, 0, 30, 49500),
        v4(10, 1, 0, 25, 25),
        "alice@example.org",
    );
    smtp_conn(
        &mut g,
        v4(10, 1, 0, 31, 49501),
        v4(10, 1, 0, 25, 587),
        "bob@example.org",
    );

    {
        let client_mac = [0x02, 0x00, 0x0a, 0x01, 0x00, 0x32];
        let server = Ipv4Addr::new(10, 1, 0, 1);
        let offered = Ipv4Addr::new(10, 1, 0, 50);
        let (any, all) = (
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 68),
            SocketAddr::new(Ipv4Addr::BROADCAST.into(), 67),
        );
        let (srv, cli) = (
            SocketAddr::new(server.into(), 67),
            SocketAddr::new(offered.into(), 68),
        );
        let xid = 0x3903_f326;
        let m = |t| dhcp_message(t, xid, client_mac, offered, server);
        g.udp("dhcp", any, all, &m(dhcp_type::DISCOVER));
        g.udp("dhcp", srv, cli, &m(dhcp_type::OFFER));
        g.udp("dhcp", any, all, &m(dhcp_type::REQUEST));
        g.udp("dhcp", srv, cli, &m(dhcp_type::ACK));
    }

    for (client, exchanges) in [(v4(10, 1, 0, 10, 123), 2), (v4(10, 1, 0, 11, 50123), 1)] {
        let server = v4(10, 1, 0, 123, 123);
        for _ in 0..exchanges {
            let q = ntp_packet(3, &mut g.noise);
            g.udp("ntp", client, server, &q);
            let r = ntp_packet(4, &mut g.noise);
            g.udp("ntp", server, client, &r);
        }
    }

    for (a, b, n) in [
        (Ipv4Addr::new(10, 1, 0, 10), Ipv4Addr::new(10, 1, 0, 1), 3),
        (Ipv4Addr::new(10, 1, 0, 11), Ipv4Addr::new(8, 8, 8, 8), 1),
    ] {
        let id = flow_id(1, (a.into(), 0), (b.into(), 0));
        for seq in 0..n {
            for (reply, src, dst) in [(false, a, b), (true, b, a)] {
                let frame = icmp_echo(src, dst, reply, 0x4242, seq);
                g.push(frame, "ipv4", Some("icmp"), Some(("icmp", id)));
            }
        }
    }
    {
        let (a, b) = (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        );
        let id = flow_id(58, (a.into(), 0), (b.into(), 0));
        for seq in 0..3 {
            for (reply, src, dst) in [(false, a, b), (true, b, a)] {
                let frame = icmpv6_echo(src, dst, reply, 0x0606, seq);
                g.push(frame, "ipv6", Some("icmpv6"), Some(("icmpv6", id)));
            }
        }
    }

    {
        let mut c = Conn::open(
            &mut g,
            "unknown",
            v4(10, 1, 0, 10, 49600),
            v4(10, 1, 0, 99, 9999),
        );
        for i in 0..3 {
            let mut msg = vec![0x00, 0x00, 0x00, 0x01, 0xfe, i];
            msg.extend(g.noise.bytes(200));
            c.send(&mut g, 0, &msg);
            let reply = g.noise.bytes(400);
            c.send(
                &mut g,
                1,
                &[&[0x00, 0x00, 0x00, 0x02, 0xfe, i][..], &reply].concat(),
            );
        }
        c.ack(&mut g, 0);
        c.close(&mut g);
    }
    for i in 0..3u8 {
        let (a, b) = (v4(10, 1, 0, 10, 40000), v4(10, 1, 0, 99, 40001));
        let mut msg = vec![0x7e, i];
        msg.extend(g.noise.bytes(64));
        g.udp("unknown", a, b, &msg);
        g.udp("unknown", b, a, &msg[..32]);
    }

    (g.tl.frames, g.truth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

    fn be16(b: &[u8], at: usize) -> usize {
        usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
    }

    #[test]
    fn tls_hellos_have_consistent_lengths_and_the_extensions() {
        let mut n = Noise::new(1);
        let h = tls_client_hello(
            Some("example.com"),
            &[tls_version::TLS13, tls_version::TLS12],
            &mut n,
        );
        assert_eq!((h[0], be16(&h, 1)), (22, 0x0301));
        assert_eq!(be16(&h, 3), h.len() - 5, "record length");
        assert_eq!(h[5], 1, "ClientHello");
        let hs_len = usize::from(h[6]) << 16 | be16(&h, 7);
        assert_eq!(hs_len, h.len() - 9, "handshake length");
        // Walk to the extensions and find SNI and supported_versions.
        let mut at = 9 + 2 + 32;
        at += 1 + usize::from(h[at]);
        at += 2 + be16(&h, at);
        at += 1 + usize::from(h[at]);
        let end = at + 2 + be16(&h, at);
        assert_eq!(end, h.len());
        at += 2;
        let mut found = BTreeMap::new();
        while at < end {
            let (kind, len) = (be16(&h, at), be16(&h, at + 2));
            found.insert(kind, h[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        assert_eq!(at, end);
        assert_eq!(&found[&0][5..], b"example.com");
        assert_eq!(found[&43], [4, 3, 4, 3, 3]);
        let old = tls_client_hello(None, &[], &mut n);
        assert!(old.len() < h.len());
        let s = tls_server_hello(tls_version::TLS13, &mut n);
        assert_eq!((s[5], be16(&s, 9)), (2, 0x0303));
        assert_eq!(be16(&s, 3), s.len() - 5);
    }

    #[test]
    fn other_payloads_follow_their_wire_formats() {
        let mut n = Noise::new(2);
        let d = dhcp_message(
            dhcp_type::DISCOVER,
            7,
            [2, 0, 0, 0, 0, 1],
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 0, 1),
        );
        assert_eq!(d.len(), 300);
        assert_eq!(&d[236..240], &DHCP_MAGIC);
        assert_eq!(&d[240..243], &[53, 1, 1]);
        let ntp = ntp_packet(3, &mut n);
        assert_eq!((ntp.len(), ntp[0] >> 3 & 7, ntp[0] & 7), (48, 4, 3));
        let q = dns_query(9, "www.example.com");
        assert_eq!((be16(&q, 0), be16(&q, 4)), (9, 1));
        assert_eq!(&q[12..17], b"\x03www\x07");
        let r = dns_response(9, "www.example.com", Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(&r[r.len() - 4..], &[1, 2, 3, 4]);
        let k = ssh_kexinit(&mut n);
        assert_eq!(
            u32::from_be_bytes(k[..4].try_into().unwrap()) as usize,
            k.len() - 4
        );
        assert_eq!(k.len() % 8, 0);
        assert!(k[4] >= 4);
        assert_eq!(k[5], 20);
        let q = quic_long(QuicLong::Initial, 1, &[1; 8], &[2; 8], 1200, &mut n);
        assert_eq!(q.len(), 1200);
        assert_eq!((q[0] & 0xf0, &q[1..5]), (0xc0, &[0, 0, 0, 1][..]));
        // DCID, SCID, token length 0, then Length covers the rest.
        assert_eq!((q[5], q[14], q[23]), (8, 8, 0));
        assert_eq!(be16(&q, 24) & 0x3fff, 1200 - 26);
        let h = quic_long(QuicLong::Handshake, 1, &[1; 8], &[2; 8], 100, &mut n);
        assert_eq!((h[0] & 0xf0, be16(&h, 23) & 0x3fff), (0xe0, 100 - 25));
        assert_eq!(
            arp_request(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST).len(),
            42
        );
    }

    /// The truth's per-frame labels agree with etherparse's reading of the
    /// frames, and the tallies add up.
    #[test]
    fn the_mix_truth_adds_up_and_matches_the_frames() {
        let (frames, truth) = mix(1_000);
        assert_eq!(truth.packets, frames.len() as u64);
        let sum = |m: &BTreeMap<&str, Tally>| {
            m.values()
                .fold((0, 0), |(p, b), t| (p + t.packets, b + t.bytes))
        };
        assert_eq!(sum(&truth.l3), (truth.packets, truth.bytes));
        let (mut l3, mut l4) = (BTreeMap::new(), BTreeMap::new());
        let mut payload_or_icmp = (0, 0);
        for f in &frames {
            let p = LaxSlicedPacket::from_ethernet(&f.data).unwrap();
            assert!(p.stop_err.is_none());
            let n = f.data.len() as u64;
            let name = match p.net {
                Some(LaxNetSlice::Ipv4(_)) => "ipv4",
                Some(LaxNetSlice::Ipv6(_)) => "ipv6",
                _ => "other",
            };
            *l3.entry(name).or_insert(0) += 1;
            let (proto, payload) = match &p.transport {
                Some(TransportSlice::Tcp(t)) => ("tcp", !t.payload().is_empty()),
                Some(TransportSlice::Udp(u)) => ("udp", !u.payload().is_empty()),
                Some(TransportSlice::Icmpv4(_)) => ("icmp", true),
                Some(TransportSlice::Icmpv6(_)) => ("icmpv6", true),
                _ => continue,
            };
            *l4.entry(proto).or_insert(0) += 1;
            if payload {
                payload_or_icmp.0 += 1;
                payload_or_icmp.1 += n;
            }
        }
        let packets = |m: &BTreeMap<&'static str, Tally>| {
            m.iter()
                .map(|(k, t)| (*k, t.packets))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(packets(&truth.l3), l3);
        assert_eq!(packets(&truth.l4), l4);
        assert_eq!(sum(&truth.app), payload_or_icmp);
        let flows: BTreeMap<&str, u64> = truth.app.iter().map(|(k, t)| (*k, t.flows)).collect();
        let expected: BTreeMap<&str, u64> = [
            ("dhcp", 2),
            ("dns", 4),
            ("http", 4),
            ("icmp", 2),
            ("icmpv6", 1),
            ("ntp", 2),
            ("quic", 2),
            ("smtp", 2),
            ("ssh", 2),
            ("tls", 4),
            ("unknown", 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(flows, expected);
        assert_eq!(truth.http_methods.values().sum::<u64>(), 8);
        assert_eq!(truth.http_responses, 8);
        assert_eq!(
            truth.tls_hellos[&("example.com".to_string(), "TLS 1.3".to_string())],
            2
        );
        assert_eq!(truth.tls_versions["TLS 1.2"], 1);
        // Deterministic.
        assert_eq!(mix(1_000).0, frames);
    }
}
