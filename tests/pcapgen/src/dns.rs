//! DNS messages (queries, responses with response codes, name compression) and exchanges, for dns-stats.
//!
//! Every message built here has its question name at [`QNAME_OFFSET`];
//! records of a response name their owner (and names inside their data)
//! with compression pointers into that question name. [`exchanges`] is the
//! deterministic capture the dns-stats tests use, with its [`Truth`]
//! computed while the frames are generated.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Frame, Timeline, flags, tcp_segment, udp_datagram};

/// Query and record types.
pub mod qtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Canonical name.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Domain name pointer.
    pub const PTR: u16 = 12;
    /// Mail exchange.
    pub const MX: u16 = 15;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service locator.
    pub const SRV: u16 = 33;
    /// EDNS(0) pseudo-record.
    pub const OPT: u16 = 41;
    /// HTTPS binding.
    pub const HTTPS: u16 = 65;
    /// Any type.
    pub const ANY: u16 = 255;
}

/// Response codes (values above 15 need an EDNS OPT record).
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Format error.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// Name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused.
    pub const REFUSED: u16 = 5;
    /// Not authoritative.
    pub const NOTAUTH: u16 = 9;
    /// Bad EDNS version (extended).
    pub const BADVERS: u16 = 16;
}

/// The mnemonic dns-stats reports for a query type: the common ones by
/// name, any other as `TYPE<n>` (RFC 3597).
#[must_use]
pub fn qtype_name(t: u16) -> String {
    let name = match t {
        qtype::A => "A",
        qtype::NS => "NS",
        qtype::CNAME => "CNAME",
        qtype::SOA => "SOA",
        qtype::PTR => "PTR",
        qtype::MX => "MX",
        qtype::TXT => "TXT",
        qtype::AAAA => "AAAA",
        qtype::SRV => "SRV",
        qtype::HTTPS => "HTTPS",
        qtype::ANY => "ANY",
        _ => return format!("TYPE{t}"),
    };
    name.to_string()
}

/// The mnemonic dns-stats reports for a response code: RFC 1035's six by
/// name, any other as `RCODE<n>`.
#[must_use]
pub fn rcode_name(r: u16) -> String {
    let name = match r {
        rcode::NOERROR => "NOERROR",
        rcode::FORMERR => "FORMERR",
        rcode::SERVFAIL => "SERVFAIL",
        rcode::NXDOMAIN => "NXDOMAIN",
        rcode::NOTIMP => "NOTIMP",
        rcode::REFUSED => "REFUSED",
        _ => return format!("RCODE{r}"),
    };
    name.to_string()
}

/// Where the question name starts in every message built here (right
/// after the 12-byte header).
pub const QNAME_OFFSET: usize = 12;

/// Header flag bits.
const QR: u16 = 0x8000;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

/// Appends `name` as uncompressed labels ending with the root label; `""`
/// and `"."` are the root. Labels must be 1 to 63 bytes.
pub fn push_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        assert!(label.len() <= 63, "label {label:?} is longer than 63 bytes");
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// A compression pointer to `offset`.
#[must_use]
pub fn pointer(offset: usize) -> [u8; 2] {
    assert!(
        offset < 0x4000,
        "pointer offset {offset} does not fit 14 bits"
    );
    (0xc000 | offset as u16).to_be_bytes()
}

/// Offset of the suffix of the question name `qname` left after skipping
/// its first `skip` labels (0: the whole name).
#[must_use]
pub fn qname_suffix(qname: &str, skip: usize) -> usize {
    QNAME_OFFSET
        + qname
            .split('.')
            .filter(|l| !l.is_empty())
            .take(skip)
            .map(|l| l.len() + 1)
            .sum::<usize>()
}

/// A name written as the labels of `prefix` followed by a pointer to the
/// question name's suffix after `skip` labels: `compressed("mail",
/// "example.com", 0)` is `mail.example.com`.
#[must_use]
pub fn compressed(prefix: &str, qname: &str, skip: usize) -> Vec<u8> {
    let mut out = Vec::new();
    push_name(&mut out, prefix);
    out.pop(); // the root label: the pointer ends the name instead
    out.extend_from_slice(&pointer(qname_suffix(qname, skip)));
    out
}

fn header(id: u16, flag_bits: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flag_bits.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out
}

fn push_question(out: &mut Vec<u8>, name: &str, qtype: u16) {
    debug_assert_eq!(out.len(), QNAME_OFFSET);
    push_name(out, name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // class IN
}

/// A recursive query (RD set) for `name` of type `qtype`, class IN.
#[must_use]
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = header(id, RD, [1, 0, 0, 0]);
    push_question(&mut out, name, qtype);
    out
}

/// A resource record of a [`response`]; its owner is a pointer to the
/// question name's suffix after `owner_skip` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Labels of the question name skipped for the owner (0: the question name).
    pub owner_skip: usize,
    /// Record type.
    pub rtype: u16,
    /// Time to live, s.
    pub ttl: u32,
    /// Record data, as written (may hold compression pointers).
    pub rdata: Vec<u8>,
}

impl Record {
    /// A record owned by the question name.
    #[must_use]
    pub fn new(rtype: u16, rdata: Vec<u8>) -> Record {
        Record {
            owner_skip: 0,
            rtype,
            ttl: 300,
            rdata,
        }
    }
}

fn push_record(out: &mut Vec<u8>, qname: &str, r: &Record) {
    out.extend_from_slice(&pointer(qname_suffix(qname, r.owner_skip)));
    out.extend_from_slice(&r.rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&r.ttl.to_be_bytes());
    out.extend_from_slice(&(r.rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&r.rdata);
}

/// A response (QR, RD, RA) to `query(id, name, qtype)` with response code
/// `rcode`, the `answers` and the `authority` records. An `rcode` above 15
/// keeps its low 4 bits in the header and its upper bits in an EDNS OPT
/// record appended to the additional section (RFC 6891).
#[must_use]
pub fn response(
    id: u16,
    name: &str,
    qtype: u16,
    rcode: u16,
    answers: &[Record],
    authority: &[Record],
) -> Vec<u8> {
    let extended = rcode > 15;
    let mut out = header(
        id,
        QR | RD | RA | (rcode & 0xf),
        [
            1,
            answers.len() as u16,
            authority.len() as u16,
            u16::from(extended),
        ],
    );
    push_question(&mut out, name, qtype);
    for r in answers.iter().chain(authority) {
        push_record(&mut out, name, r);
    }
    if extended {
        out.push(0); // owner: root
        out.extend_from_slice(&qtype::OPT.to_be_bytes());
        out.extend_from_slice(&1232u16.to_be_bytes()); // UDP payload size
        out.extend_from_slice(&(u32::from(rcode >> 4) << 24).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    out
}

/// Data of an A record.
#[must_use]
pub fn a(ip: Ipv4Addr) -> Vec<u8> {
    ip.octets().to_vec()
}

/// Data of an AAAA record.
#[must_use]
pub fn aaaa(ip: Ipv6Addr) -> Vec<u8> {
    ip.octets().to_vec()
}

/// Data of a TXT record with one character string.
#[must_use]
pub fn txt(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// Data of an uncompressed name (NS, PTR, CNAME targets elsewhere).
#[must_use]
pub fn name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_name(&mut out, name);
    out
}

/// A DNS message with the 2-byte length prefix of DNS over TCP.
#[must_use]
pub fn tcp_message(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

/// Pushes `query` from `client` to `server` over UDP and, with `reply =
/// Some((response, latency_ns))`, the response `latency_ns` after the
/// query. Returns the query's timestamp; the clock goes on from the last
/// frame pushed.
pub fn udp_exchange(
    tl: &mut Timeline,
    client: SocketAddr,
    server: SocketAddr,
    query: &[u8],
    reply: Option<(&[u8], u64)>,
) -> u64 {
    let at = tl.now_ns;
    tl.push(udp_datagram(client, server, query));
    if let Some((response, latency_ns)) = reply {
        tl.now_ns = at + latency_ns;
        tl.push(udp_datagram(server, client, response));
    }
    at
}

/// Pushes a whole DNS-over-TCP connection: handshake, the query in one
/// segment, the response in one segment `latency_ns` after the query, the
/// client's ACK and the close (9 frames, 2 of them carrying DNS). Returns
/// the query's timestamp.
pub fn tcp_exchange(
    tl: &mut Timeline,
    client: SocketAddr,
    server: SocketAddr,
    query: &[u8],
    response: &[u8],
    latency_ns: u64,
) -> u64 {
    let (cs, ss) = (1_000u32, 50_000u32);
    let (q, r) = (tcp_message(query), tcp_message(response));
    let (ql, rl) = (q.len() as u32, r.len() as u32);
    let pa = flags::PSH | flags::ACK;
    let fa = flags::FIN | flags::ACK;
    tl.push(tcp_segment(client, server, cs, 0, flags::SYN, 65535, &[]));
    tl.push(tcp_segment(
        server,
        client,
        ss,
        cs + 1,
        flags::SYN | flags::ACK,
        65535,
        &[],
    ));
    tl.push(tcp_segment(
        client,
        server,
        cs + 1,
        ss + 1,
        flags::ACK,
        65535,
        &[],
    ));
    let at = tl.now_ns;
    tl.push(tcp_segment(client, server, cs + 1, ss + 1, pa, 65535, &q));
    tl.now_ns = at + latency_ns;
    tl.push(tcp_segment(
        server,
        client,
        ss + 1,
        cs + 1 + ql,
        pa,
        65535,
        &r,
    ));
    let (c_end, s_end) = (cs + 1 + ql, ss + 1 + rl);
    tl.push(tcp_segment(
        client,
        server,
        c_end,
        s_end,
        flags::ACK,
        65535,
        &[],
    ));
    tl.push(tcp_segment(client, server, c_end, s_end, fa, 65535, &[]));
    tl.push(tcp_segment(
        server,
        client,
        s_end,
        c_end + 1,
        fa,
        65535,
        &[],
    ));
    tl.push(tcp_segment(
        client,
        server,
        c_end + 1,
        s_end + 1,
        flags::ACK,
        65535,
        &[],
    ));
    at
}

/// What [`exchanges`] generated, for dns-stats with `ports = [5353]` and
/// `timeout_ms =` [`TRUTH_TIMEOUT_MS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    /// Frames in the capture.
    pub frames: u64,
    /// Frames carrying a DNS message (well-formed or not) over UDP or TCP
    /// port 53 or 5353; every other frame is "other".
    pub dns_packets: u64,
    /// Well-formed queries.
    pub queries: u64,
    /// Well-formed responses.
    pub responses: u64,
    /// Malformed DNS messages.
    pub malformed: u64,
    /// Queries by type mnemonic ([`qtype_name`]).
    pub qtypes: BTreeMap<String, u64>,
    /// Responses by code mnemonic ([`rcode_name`]).
    pub rcodes: BTreeMap<String, u64>,
    /// Queries by name, lower-cased.
    pub names: BTreeMap<String, u64>,
    /// Latencies of the answered queries, ns (whole microseconds).
    pub latencies_ns: Vec<u64>,
    /// Queries that got no response within the timeout.
    pub unanswered: u64,
    /// Responses without a query awaiting them (unsolicited or late).
    pub unmatched_responses: u64,
    /// Time from the last unanswered query to the last frame, ns.
    pub min_unanswered_age_ns: u64,
}

/// The timeout [`Truth`] assumes: above every answered latency, below the
/// late response's latency and below every unanswered query's age.
pub const TRUTH_TIMEOUT_MS: u64 = 1_000;

/// Builds the capture and its truth at once.
struct Gen {
    tl: Timeline,
    truth: Truth,
    next_id: u16,
    unanswered_at: Vec<u64>,
}

/// A reply of a [`Gen`] exchange.
enum Reply<'a> {
    /// No response at all.
    None,
    /// A response with this code, answers and authority records after
    /// this many microseconds.
    After(u64, u16, &'a [Record], &'a [Record]),
}

impl Gen {
    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(0x0101);
        self.next_id
    }

    fn count_query(&mut self, name: &str, qt: u16) {
        self.truth.dns_packets += 1;
        self.truth.queries += 1;
        *self.truth.qtypes.entry(qtype_name(qt)).or_default() += 1;
        *self
            .truth
            .names
            .entry(name.to_ascii_lowercase())
            .or_default() += 1;
    }

    fn count_response(&mut self, rc: u16) {
        self.truth.dns_packets += 1;
        self.truth.responses += 1;
        *self.truth.rcodes.entry(rcode_name(rc)).or_default() += 1;
    }

    /// Counts a reply `latency_us` after its query: matched within the
    /// timeout, otherwise an unanswered query and an unmatched response.
    fn count_latency(&mut self, latency_us: u64) {
        if latency_us <= TRUTH_TIMEOUT_MS * 1000 {
            self.truth.latencies_ns.push(latency_us * 1000);
        } else {
            self.truth.unanswered += 1;
            self.truth.unmatched_responses += 1;
        }
    }

    fn udp(&mut self, client: SocketAddr, server: SocketAddr, qname: &str, qt: u16, reply: Reply) {
        let id = self.id();
        let q = query(id, qname, qt);
        self.count_query(qname, qt);
        match reply {
            Reply::None => {
                let at = udp_exchange(&mut self.tl, client, server, &q, None);
                self.unanswered_at.push(at);
                self.truth.unanswered += 1;
            }
            Reply::After(us, rc, answers, authority) => {
                let r = response(id, qname, qt, rc, answers, authority);
                udp_exchange(&mut self.tl, client, server, &q, Some((&r, us * 1000)));
                self.count_response(rc);
                self.count_latency(us);
            }
        }
    }

    fn tcp(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        qname: &str,
        qt: u16,
        us: u64,
        answers: &[Record],
    ) {
        let id = self.id();
        let q = query(id, qname, qt);
        let r = response(id, qname, qt, rcode::NOERROR, answers, &[]);
        tcp_exchange(&mut self.tl, client, server, &q, &r, us * 1000);
        self.count_query(qname, qt);
        self.count_response(rcode::NOERROR);
        self.count_latency(us);
    }

    /// A UDP datagram to a DNS port whose payload is not a well-formed message.
    fn malformed(&mut self, client: SocketAddr, server: SocketAddr, payload: &[u8]) {
        self.tl.push(udp_datagram(client, server, payload));
        self.truth.dns_packets += 1;
        self.truth.malformed += 1;
    }
}

/// DNS payloads that are not well-formed messages, each for a different
/// reason; a parser must refuse every one without looping or reading past
/// the end.
#[must_use]
pub fn malformed_messages() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // 1. Shorter than the header.
    out.push(vec![0x12, 0x34, 0x01, 0x00, 0x00]);
    // 2. A query without a question.
    out.push(header(0x2001, RD, [0, 0, 0, 0]));
    // 3. A question name that is a pointer to itself.
    let mut m = header(0x2002, RD, [1, 0, 0, 0]);
    m.extend_from_slice(&pointer(QNAME_OFFSET));
    m.extend_from_slice(&[0, 1, 0, 1]);
    out.push(m);
    // 4. A label, then a pointer back to that label: a loop.
    let mut m = header(0x2003, RD, [1, 0, 0, 0]);
    m.extend_from_slice(&[1, b'a']);
    m.extend_from_slice(&pointer(QNAME_OFFSET));
    m.extend_from_slice(&[0, 1, 0, 1]);
    out.push(m);
    // 5. A reserved label type (0x40).
    let mut m = header(0x2004, RD, [1, 0, 0, 0]);
    m.extend_from_slice(&[0x40, b'a', 0, 0, 1, 0, 1]);
    out.push(m);
    // 6. A name longer than 255 bytes (five 63-byte labels).
    let mut m = header(0x2005, RD, [1, 0, 0, 0]);
    for _ in 0..5 {
        m.push(63);
        m.extend_from_slice(&[b'x'; 63]);
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    out.push(m);
    // 7. A question cut after its name (no type and class).
    let mut m = query(0x2006, "cut.example", qtype::A);
    m.truncate(m.len() - 4);
    out.push(m);
    // 8. A response announcing three answers that holds one.
    let mut m = response(
        0x2007,
        "short.example",
        qtype::A,
        rcode::NOERROR,
        &[Record::new(qtype::A, a(Ipv4Addr::new(192, 0, 2, 1)))],
        &[],
    );
    m[7] = 3;
    out.push(m);
    // 9. An answer whose data length runs past the end.
    let mut m = response(
        0x2008,
        "long.example",
        qtype::A,
        rcode::NOERROR,
        &[Record::new(qtype::A, a(Ipv4Addr::new(192, 0, 2, 2)))],
        &[],
    );
    let at = m.len() - 6;
    m[at..at + 2].copy_from_slice(&200u16.to_be_bytes());
    out.push(m);
    // 10. An answer owner pointing forward, past the end.
    let mut m = response(
        0x2009,
        "fwd.example",
        qtype::A,
        rcode::NOERROR,
        &[Record::new(qtype::A, a(Ipv4Addr::new(192, 0, 2, 3)))],
        &[],
    );
    let owner = QNAME_OFFSET + "fwd.example".len() + 2 + 4;
    m[owner..owner + 2].copy_from_slice(&pointer(0x3000));
    out.push(m);
    out
}

/// The dns-stats capture: UDP exchanges over IPv4 and IPv6 between three
/// clients and a resolver (10.1.0.53:53), one exchange over TCP, one on
/// port 5353, every common query type, six response codes plus NOTAUTH
/// and an extended BADVERS, names in mixed case, two queries outstanding
/// at once on one client port answered in reverse order, three unanswered
/// queries (then 1.5 s of other exchanges), one response later than
/// [`TRUTH_TIMEOUT_MS`], one unsolicited response, one non-DNS datagram,
/// and the [`malformed_messages`] plus two malformed DNS-over-TCP
/// segments. Frames are 10 ms apart except where latencies set them.
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn exchanges(start_ns: u64) -> (Vec<Frame>, Truth) {
    let v4 = |x: u8, port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, x)), port);
    let v6 = |x: u16, port: u16| {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, x)),
            port,
        )
    };
    let (c1, c2, c3) = (v4(1, 40001), v4(2, 40002), v4(3, 40003));
    let (c6, s6) = (v6(0x10, 40006), v6(0x53, 53));
    let (s, mdns) = (v4(53, 53), v4(54, 5353));
    let mut g = Gen {
        tl: Timeline::new(start_ns, 10_000_000),
        truth: Truth::default(),
        next_id: 0x1000,
        unanswered_at: Vec::new(),
    };
    use qtype::{A, AAAA, ANY, CNAME, HTTPS, MX, NS, PTR, SOA, SRV, TXT};

    // Unanswered queries first; everything after them takes over 1.5 s.
    g.udp(c1, s, "lost.example.com", A, Reply::None);
    g.udp(c2, s, "timeout.test", AAAA, Reply::None);
    g.udp(c6, s6, "www.example.com", AAAA, Reply::None);
    g.tl.wait(1_500_000_000);

    let www_a = [
        Record::new(A, a(Ipv4Addr::new(93, 184, 216, 34))),
        Record::new(A, a(Ipv4Addr::new(93, 184, 216, 35))),
    ];
    g.udp(
        c1,
        s,
        "www.example.com",
        A,
        Reply::After(1200, rcode::NOERROR, &www_a, &[]),
    );
    g.udp(
        c2,
        s,
        "www.example.com",
        A,
        Reply::After(800, rcode::NOERROR, &www_a[..1], &[]),
    );
    g.udp(
        c3,
        s,
        "WWW.Example.COM",
        A,
        Reply::After(950, rcode::NOERROR, &www_a[1..], &[]),
    );
    let www_aaaa = [Record::new(
        AAAA,
        aaaa(Ipv6Addr::new(0x2606, 0x2800, 0x21f, 0, 0, 0, 0, 0x1946)),
    )];
    g.udp(
        c1,
        s,
        "www.example.com",
        AAAA,
        Reply::After(1500, rcode::NOERROR, &www_aaaa, &[]),
    );
    let mut mx = 10u16.to_be_bytes().to_vec();
    mx.extend_from_slice(&compressed("mail", "example.com", 0));
    g.udp(
        c1,
        s,
        "example.com",
        MX,
        Reply::After(2100, rcode::NOERROR, &[Record::new(MX, mx)], &[]),
    );
    g.udp(
        c2,
        s,
        "example.com",
        TXT,
        Reply::After(
            900,
            rcode::NOERROR,
            &[Record::new(TXT, txt("v=spf1 -all"))],
            &[],
        ),
    );
    let mut soa = compressed("ns", "nosuch.example.com", 1);
    soa.extend_from_slice(&compressed("hostmaster", "nosuch.example.com", 1));
    for v in [2_024_010_101u32, 7200, 3600, 1_209_600, 3600] {
        soa.extend_from_slice(&v.to_be_bytes());
    }
    let soa_auth = [Record {
        owner_skip: 1,
        ..Record::new(SOA, soa)
    }];
    g.udp(
        c3,
        s,
        "nosuch.example.com",
        A,
        Reply::After(3000, rcode::NXDOMAIN, &[], &soa_auth),
    );
    g.udp(
        c1,
        s,
        "broken.test",
        A,
        Reply::After(45_000, rcode::SERVFAIL, &[], &[]),
    );
    let ns = [
        Record::new(NS, name("a.iana-servers.net")),
        Record::new(NS, name("b.iana-servers.net")),
    ];
    g.udp(
        c2,
        s,
        "example.org",
        NS,
        Reply::After(1700, rcode::NOERROR, &ns, &[]),
    );
    let ptr = [Record::new(PTR, name("www.example.com"))];
    g.udp(
        c3,
        s,
        "34.216.184.93.in-addr.arpa",
        PTR,
        Reply::After(2500, rcode::NOERROR, &ptr, &[]),
    );
    let mut srv = Vec::new();
    for v in [10u16, 60, 5060] {
        srv.extend_from_slice(&v.to_be_bytes());
    }
    srv.extend_from_slice(&compressed("sip", "_sip._tcp.example.com", 2));
    g.udp(
        c1,
        s,
        "_sip._tcp.example.com",
        SRV,
        Reply::After(1100, rcode::NOERROR, &[Record::new(SRV, srv)], &[]),
    );
    g.udp(
        c2,
        s,
        "example.com",
        HTTPS,
        Reply::After(600, rcode::NOERROR, &[], &[]),
    );
    g.udp(
        c3,
        s,
        "example.com",
        ANY,
        Reply::After(400, rcode::REFUSED, &[], &[]),
    );
    let soa_ans = [Record::new(SOA, {
        let mut d = compressed("ns", "example.com", 0);
        d.extend_from_slice(&compressed("hostmaster", "example.com", 0));
        d.extend_from_slice(&[0; 20]);
        d
    })];
    g.udp(
        c1,
        s,
        "example.com",
        SOA,
        Reply::After(1300, rcode::NOERROR, &soa_ans, &[]),
    );
    g.udp(
        c2,
        s,
        "example.com",
        99,
        Reply::After(500, rcode::NOTIMP, &[], &[]),
    );
    g.udp(
        c3,
        s,
        "bad.example",
        A,
        Reply::After(700, rcode::FORMERR, &[], &[]),
    );
    g.udp(
        c1,
        s,
        "zone.example",
        SOA,
        Reply::After(650, rcode::NOTAUTH, &[], &[]),
    );
    g.udp(
        c2,
        s,
        "edns.example",
        A,
        Reply::After(550, rcode::BADVERS, &[], &[]),
    );
    g.udp(
        c6,
        s6,
        "www.example.com",
        AAAA,
        Reply::After(1250, rcode::NOERROR, &www_aaaa, &[]),
    );
    let cname = [Record::new(
        CNAME,
        compressed("www", "alias.example.com", 1),
    )];
    g.udp(
        c3,
        s,
        "alias.example.com",
        CNAME,
        Reply::After(1050, rcode::NOERROR, &cname, &[]),
    );
    g.udp(
        c2,
        mdns,
        "printer.local",
        A,
        Reply::After(
            300,
            rcode::NOERROR,
            &[Record::new(A, a(Ipv4Addr::new(10, 1, 0, 77)))],
            &[],
        ),
    );
    let big = [Record::new(TXT, txt(&"k=".repeat(300)))];
    g.tcp(v4(1, 40100), s, "example.com", TXT, 5000, &big);

    // Two queries outstanding on one client port, answered in reverse order.
    let (id1, id2) = (g.id(), g.id());
    let t = g.tl.now_ns;
    let one = [Record::new(A, a(Ipv4Addr::new(192, 0, 2, 10)))];
    let frames = [
        (0, c1, s, query(id1, "a.example.com", A)),
        (100, c1, s, query(id2, "b.example.com", A)),
        (
            2100,
            s,
            c1,
            response(id2, "b.example.com", A, rcode::NOERROR, &one, &[]),
        ),
        (
            3500,
            s,
            c1,
            response(id1, "a.example.com", A, rcode::NOERROR, &one, &[]),
        ),
    ];
    for (us, from, to, msg) in frames {
        g.tl.now_ns = t + us * 1000;
        g.tl.push(udp_datagram(from, to, &msg));
    }
    g.count_query("a.example.com", A);
    g.count_query("b.example.com", A);
    g.count_response(rcode::NOERROR);
    g.count_response(rcode::NOERROR);
    g.count_latency(2000);
    g.count_latency(3500);

    // A response after the timeout: the query is unanswered, the response unmatched.
    g.udp(
        c2,
        s,
        "slow.example.com",
        A,
        Reply::After(1_500_000, rcode::NOERROR, &[], &[]),
    );
    // An unsolicited response.
    g.tl.push(udp_datagram(
        s,
        c3,
        &response(0xbeef, "example.com", A, rcode::NOERROR, &[], &[]),
    ));
    g.count_response(rcode::NOERROR);
    g.truth.unmatched_responses += 1;
    // Not DNS: another port.
    g.tl.push(udp_datagram(c1, v4(9, 9999), b"hello, not dns"));

    for m in malformed_messages() {
        g.malformed(c3, s, &m);
    }
    // DNS over TCP: a length prefix longer than the segment, and a lone byte.
    let q = tcp_message(&query(0x3001, "split.example", A));
    let pa = flags::PSH | flags::ACK;
    g.tl.push(tcp_segment(
        v4(2, 40200),
        s,
        1,
        1,
        pa,
        65535,
        &q[..q.len() - 5],
    ));
    g.tl.push(tcp_segment(v4(2, 40201), s, 1, 1, pa, 65535, &[0]));
    g.truth.dns_packets += 2;
    g.truth.malformed += 2;

    let Gen {
        tl,
        mut truth,
        unanswered_at,
        ..
    } = g;
    let last = tl.frames.last().map_or(0, |f| f.ts_ns);
    truth.frames = tl.frames.len() as u64;
    truth.min_unanswered_age_ns = unanswered_at.iter().map(|&at| last - at).min().unwrap_or(0);
    (tl.frames, truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a name (following pointers, at most 16 jumps) for the tests.
    fn read_name(msg: &[u8], mut at: usize) -> (String, usize) {
        let mut labels = Vec::new();
        let mut end = None;
        for _ in 0..16 {
            let len = msg[at] as usize;
            if len & 0xc0 == 0xc0 {
                end.get_or_insert(at + 2);
                at = ((len & 0x3f) << 8) | msg[at + 1] as usize;
                continue;
            }
            if len == 0 {
                return (labels.join("."), end.unwrap_or(at + 1));
            }
            labels.push(String::from_utf8(msg[at + 1..at + 1 + len].to_vec()).unwrap());
            at += 1 + len;
        }
        panic!("pointer loop");
    }

    #[test]
    fn queries_have_a_header_and_one_question() {
        let q = query(0xabcd, "www.example.com", qtype::AAAA);
        // 12 header + (1+3 + 1+7 + 1+3 + 1) name + 4.
        assert_eq!(q.len(), 12 + 17 + 4);
        assert_eq!(&q[..4], &[0xab, 0xcd, 0x01, 0x00]);
        assert_eq!(&q[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_name(&q, QNAME_OFFSET), ("www.example.com".into(), 29));
        assert_eq!(&q[29..], &[0, 28, 0, 1]);
        assert_eq!(name("."), vec![0]);
    }

    #[test]
    fn responses_compress_owners_and_data_into_the_question() {
        let mut mx = 10u16.to_be_bytes().to_vec();
        mx.extend_from_slice(&compressed("mail", "example.com", 0));
        let auth = Record {
            owner_skip: 1,
            ..Record::new(qtype::NS, compressed("ns1", "www.example.com", 1))
        };
        let r = response(
            7,
            "www.example.com",
            qtype::MX,
            rcode::NXDOMAIN,
            &[Record::new(qtype::MX, mx)],
            &[auth],
        );
        assert_eq!(r[3] & 0xf, 3);
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(&r[4..12], &[0, 1, 0, 1, 0, 1, 0, 0]);
        let ans = 12 + 17 + 4;
        assert_eq!(
            &r[ans..ans + 2],
            &[0xc0, 0x0c],
            "owner points at the question"
        );
        assert_eq!(read_name(&r, ans).0, "www.example.com");
        // rdata: preference, "mail" label, pointer to the question's start.
        let rd = ans + 12;
        assert_eq!(&r[rd - 2..rd], &(2u16 + 5 + 2).to_be_bytes());
        assert_eq!(
            read_name(&r, rd + 2),
            ("mail.www.example.com".into(), rd + 9)
        );
        let ns = rd + 9;
        assert_eq!(&r[ns..ns + 2], &[0xc0, 16], "owner skips the www label");
        assert_eq!(read_name(&r, ns).0, "example.com");
        assert_eq!(read_name(&r, ns + 12).0, "ns1.example.com");
        assert_eq!(r.len(), ns + 12 + 6);
    }

    #[test]
    fn extended_rcodes_add_an_opt_record() {
        let r = response(1, "x.example", qtype::A, rcode::BADVERS, &[], &[]);
        assert_eq!(r[3] & 0xf, 0);
        assert_eq!(&r[10..12], &[0, 1], "one additional record");
        let opt = r.len() - 11;
        assert_eq!(r[opt], 0);
        assert_eq!(&r[opt + 1..opt + 3], &41u16.to_be_bytes());
        assert_eq!(r[opt + 5], 1, "upper rcode bits in the TTL's top byte");
        assert_eq!(&tcp_message(&r)[..2], &(r.len() as u16).to_be_bytes());
    }

    #[test]
    fn exchanges_truth_adds_up() {
        let (frames, t) = exchanges(1_000_000_000);
        assert_eq!(t.frames, frames.len() as u64);
        assert!(
            frames.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
            "time order"
        );
        assert_eq!(t.dns_packets, t.queries + t.responses + t.malformed);
        // Every frame but the non-DNS datagram and 7 TCP control segments carries DNS.
        assert_eq!(t.frames - t.dns_packets, 1 + 7);
        assert_eq!(t.qtypes.values().sum::<u64>(), t.queries);
        assert_eq!(t.names.values().sum::<u64>(), t.queries);
        assert_eq!(t.rcodes.values().sum::<u64>(), t.responses);
        assert_eq!(
            t.queries,
            t.latencies_ns.len() as u64 + t.unanswered,
            "every query is answered or unanswered"
        );
        assert_eq!(
            t.responses,
            t.latencies_ns.len() as u64 + t.unmatched_responses
        );
        assert_eq!(
            (t.unanswered, t.unmatched_responses, t.malformed),
            (4, 2, 12)
        );
        assert_eq!(t.names["www.example.com"], 6);
        assert_eq!(t.names["example.com"], 7);
        assert_eq!(t.rcodes["RCODE16"], 1);
        let max = t.latencies_ns.iter().max().copied().unwrap();
        assert!(
            max < TRUTH_TIMEOUT_MS * 1_000_000
                && t.min_unanswered_age_ns > TRUTH_TIMEOUT_MS * 1_000_000
        );
    }
}
