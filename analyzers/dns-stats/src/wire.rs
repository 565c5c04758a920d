//! The DNS wire format: names (compression pointers, presentation form),
//! messages as far as the analyzer reads them, and the names of query types
//! and response codes.

const MAX_NAME: usize = 255;
const OPT: u16 = 41;

pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Reads the name at `at`; returns where it ends in place (after its root
/// label or first pointer). Appends its presentation form to `out` if
/// given. Refuses names over 255 bytes, reserved label types, and pointers
/// that do not jump strictly before the previous jump (so it terminates).
fn read_name(msg: &[u8], at: usize, mut out: Option<&mut String>) -> Option<usize> {
    let mut pos = at;
    // Every pointer must land before this: the start of the current run of labels.
    let mut limit = at;
    let mut end = None;
    let mut wire_len = 1; // the root label
    loop {
        let b = *msg.get(pos)?;
        match b & 0xc0 {
            0x00 if b == 0 => return Some(end.unwrap_or(pos + 1)),
            0x00 => {
                let len = usize::from(b);
                let label = msg.get(pos + 1..pos + 1 + len)?;
                wire_len += 1 + len;
                if wire_len > MAX_NAME {
                    return None;
                }
                if let Some(s) = out.as_deref_mut() {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    push_label(s, label);
                }
                pos += 1 + len;
            }
            0xc0 => {
                let target = usize::from(be16(msg, pos)? & 0x3fff);
                if target >= limit {
                    return None;
                }
                if end.is_none() {
                    end = Some(pos + 2);
                }
                limit = target;
                pos = target;
            }
            _ => return None,
        }
    }
}

fn push_label(s: &mut String, label: &[u8]) {
    for &c in label {
        match c {
            0x21..=0x7e if c != b'.' && c != b'\\' => s.push(char::from(c.to_ascii_lowercase())),
            _ => s.push_str(&format!("\\{:03}", c)),
        }
    }
}

/// Walks the questions after the first and every record from `pos`;
/// returns the extended rcode bits of the first OPT record (0 if none).
/// Each step consumes at least 5 bytes or fails, so this ends.
fn skip_records(msg: &[u8], mut pos: usize, counts: [u16; 4]) -> Option<u16> {
    let mut ext = None;
    for _ in 1..counts[0] {
        pos = read_name(msg, pos, None)? + 4;
        msg.get(..pos)?;
    }
    let before_additional = u32::from(counts[1]) + u32::from(counts[2]);
    for i in 0..before_additional + u32::from(counts[3]) {
        pos = read_name(msg, pos, None)?;
        let rtype = be16(msg, pos)?;
        let ttl = be32(msg, pos + 4)?;
        let rdlen = usize::from(be16(msg, pos + 8)?);
        pos += 10 + rdlen;
        msg.get(..pos)?;
        if i >= before_additional && rtype == OPT && ext.is_none() {
            ext = Some((ttl >> 24) as u16);
        }
    }
    Some(ext.unwrap_or(0))
}

/// A well-formed message's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) id: u16,
    pub(crate) response: bool,
    /// Header rcode, extended by an OPT record.
    pub(crate) rcode: u16,
    /// Name and type of the first question.
    pub(crate) question: Option<(String, u16)>,
}

/// Parses a DNS message; `None` if malformed. With `cut` (the capture
/// ended before the message did), records that run past the end are
/// accepted; the header and the first question are always required.
pub(crate) fn parse(msg: &[u8], cut: bool) -> Option<Message> {
    let id = be16(msg, 0)?;
    let flag_bits = be16(msg, 2)?;
    let counts = [be16(msg, 4)?, be16(msg, 6)?, be16(msg, 8)?, be16(msg, 10)?];
    let response = flag_bits & 0x8000 != 0;
    let mut rcode = flag_bits & 0xf;
    let mut pos = 12;
    let mut question = None;
    if counts[0] == 0 && !response {
        return None;
    }
    if counts[0] > 0 {
        let mut name = String::new();
        pos = read_name(msg, pos, Some(&mut name))?;
        let qtype = be16(msg, pos)?;
        be16(msg, pos + 2)?;
        pos += 4;
        if name.is_empty() {
            name.push('.');
        }
        question = Some((name, qtype));
    }
    match skip_records(msg, pos, counts) {
        Some(ext) => rcode |= ext << 4,
        None if cut => {}
        None => return None,
    }
    Some(Message {
        id,
        response,
        rcode,
        question,
    })
}

pub(crate) fn qtype_name(t: u16) -> String {
    let name = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{}", t),
    };
    name.to_string()
}

pub(crate) fn rcode_name(r: u16) -> String {
    let name = match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => return format!("RCODE{}", r),
    };
    name.to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query (RD) for `name` of type `qtype`.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m
    }

    /// The response to `query(...)` with `rcode` and one A record owned by
    /// a pointer to the question name.
    pub(crate) fn response(id: u16, name: &str, qtype: u16, rcode: u8) -> Vec<u8> {
        let mut m = query(id, name, qtype);
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[7] = 1;
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0, 0, 4, 192, 0, 2, 1]);
        m
    }

    #[test]
    fn names_follow_pointers_and_loops_are_refused() {
        let mut m = query(1, "www.Example.com", 1);
        let mut s = String::new();
        assert_eq!(read_name(&m, 12, Some(&mut s)), Some(29));
        assert_eq!(s, "www.example.com");
        // "mail" + pointer to the question name's "example.com".
        m.extend_from_slice(&[4, b'm', b'a', b'i', b'l', 0xc0, 16]);
        let mut s = String::new();
        assert_eq!(read_name(&m, 33, Some(&mut s)), Some(40));
        assert_eq!(s, "mail.example.com");
        // A pointer to itself, and a label then a pointer back to it.
        assert_eq!(read_name(&[0xc0, 0], 0, None), None);
        assert_eq!(read_name(&[1, b'a', 0xc0, 0], 0, None), None);
        // Pointing forward is refused too, as are reserved label types.
        assert_eq!(read_name(&[0xc0, 2, 0], 0, None), None);
        assert_eq!(read_name(&[0x41, b'a', 0], 0, None), None);
        // Escapes keep the result printable.
        let mut s = String::new();
        read_name(&[3, b'a', b'.', 0x00, 0], 0, Some(&mut s)).unwrap();
        assert_eq!(s, "a\\046\\000");
        // 255 bytes is the most.
        let mut long = Vec::new();
        for _ in 0..4 {
            long.push(62);
            long.extend_from_slice(&[b'x'; 62]);
        }
        long.push(0);
        assert_eq!(long.len(), 253);
        assert_eq!(read_name(&long, 0, None), Some(253));
        let mut longer = vec![1, b'y'];
        longer.extend_from_slice(&long);
        assert_eq!(read_name(&longer, 0, None), Some(255));
        longer.splice(0..0, [2, b'z', b'z']);
        assert_eq!(read_name(&longer, 0, None), None, "258 bytes");
    }

    #[test]
    fn parse_checks_every_record_unless_the_capture_was_cut() {
        let r = response(9, "a.example", 1, 3);
        let m = parse(&r, false).unwrap();
        assert_eq!(
            m,
            Message {
                id: 9,
                response: true,
                rcode: 3,
                question: Some(("a.example".into(), 1)),
            }
        );
        let short = &r[..r.len() - 2];
        assert_eq!(parse(short, false), None);
        assert_eq!(parse(short, true).unwrap().rcode, 3);
        // Header and question are needed even when cut.
        assert_eq!(parse(&r[..20], true), None);
        // A query needs a question.
        let mut q = query(1, "x", 1);
        q[5] = 0;
        assert_eq!(parse(&q[..12], false), None);
        // An OPT record extends the rcode.
        let mut e = query(3, "x", 1);
        e[2] = 0x81;
        e[11] = 1;
        e.extend_from_slice(&[0, 0, 41, 4, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&e, false).unwrap().rcode, 16);
    }
}
