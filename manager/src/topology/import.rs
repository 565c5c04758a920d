//! The figure-5 table from a file: CSV or TOML, each refusal naming the
//! file, the line, the field and the value.

use std::net::IpAddr;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::error::{Invalid, Location, Problem, TopologyError};
use super::graph::Entry;
use super::{Tap, Topology};

/// The CSV header line, and the field names of both formats.
pub const CSV_HEADER: &str = "monitor_address,link_id,from_router,to_router";

pub(super) const MONITOR_ADDRESS: &str = "monitor_address";
pub(super) const LINK_ID: &str = "link_id";
pub(super) const FROM_ROUTER: &str = "from_router";
pub(super) const TO_ROUTER: &str = "to_router";
const FIELDS: [&str; 4] = [MONITOR_ADDRESS, LINK_ID, FROM_ROUTER, TO_ROUTER];

impl Topology {
    /// Parses the CSV form (see the [module documentation](super)).
    ///
    /// # Errors
    /// Malformed CSV or a refused row, naming the line.
    pub fn parse_csv(text: &str) -> Result<Self, TopologyError> {
        Ok(Self::build(parse_csv_entries(text)?)?)
    }

    /// Parses the TOML form (see the [module documentation](super)).
    ///
    /// # Errors
    /// Malformed TOML or a refused entry, naming the entry and the line.
    pub fn parse_toml(text: &str) -> Result<Self, TopologyError> {
        Ok(Self::build(parse_toml_entries(text)?)?)
    }

    /// Reads a `.toml` or `.csv` file.
    ///
    /// # Errors
    /// The file cannot be read, has another extension, or is refused (the
    /// error names the file and the line).
    pub fn from_path(path: &Path) -> Result<Self, TopologyError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parse = match ext.as_deref() {
            Some("toml") => Self::parse_toml,
            Some("csv") => Self::parse_csv,
            _ => {
                return Err(TopologyError::Format {
                    path: path.to_owned(),
                });
            }
        };
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(&text).map_err(|e| match e {
            TopologyError::Invalid(mut invalid) => {
                invalid.file = Some(path.to_owned());
                TopologyError::Invalid(invalid)
            }
            other => other,
        })
    }
}

pub(super) fn parse_address(
    at: &Location,
    field: &str,
    value: &str,
) -> Result<IpAddr, Box<Invalid>> {
    value.parse().map_err(|_| {
        Invalid::new(at.clone(), Problem::NotAnAddress)
            .field(field)
            .value(value)
    })
}

pub(super) fn required_address(
    at: &Location,
    field: &str,
    value: &str,
) -> Result<IpAddr, Box<Invalid>> {
    if value.is_empty() {
        return Err(Invalid::new(at.clone(), Problem::Missing).field(field));
    }
    parse_address(at, field, value)
}

/// Monitor address and link id as written (empty: absent), both or neither.
fn tap_of(at: &Location, monitor: &str, link_id: &str) -> Result<Option<Tap>, Box<Invalid>> {
    match (monitor.is_empty(), link_id.is_empty()) {
        (true, true) => Ok(None),
        (true, false) => Err(Invalid::new(at.clone(), Problem::HalfTap).field(MONITOR_ADDRESS)),
        (false, true) => Err(Invalid::new(at.clone(), Problem::HalfTap).field(LINK_ID)),
        (false, false) => Ok(Some(Tap {
            monitor: parse_address(at, MONITOR_ADDRESS, monitor)?,
            link_id: link_id.parse().map_err(|_| {
                Invalid::new(at.clone(), Problem::NotALinkId)
                    .field(LINK_ID)
                    .value(link_id)
            })?,
        })),
    }
}

fn parse_csv_entries(text: &str) -> Result<Vec<Entry>, Box<Invalid>> {
    let lines = Lines::new(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut entries = Vec::new();
    let mut header_seen = false;
    for record in reader.records() {
        let line_of = |pos: Option<&csv::Position>| {
            pos.map_or(0, |p| {
                csv_record_line(
                    text,
                    &lines,
                    usize::try_from(p.byte()).unwrap_or(usize::MAX),
                )
            })
        };
        let record = record.map_err(|e| {
            let message = match e.kind() {
                csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8: {err}"),
                _ => e.to_string(),
            };
            Invalid::new(
                Location::CsvLine(line_of(e.position())),
                Problem::Syntax(message),
            )
        })?;
        let at = Location::CsvLine(line_of(record.position()));
        // A line of spaces (or of commas only) is blank.
        if record.iter().all(str::is_empty) {
            continue;
        }
        if !header_seen {
            if record.iter().ne(FIELDS) {
                let written: Vec<&str> = record.iter().collect();
                return Err(Invalid::new(at, Problem::Header).value(written.join(",")));
            }
            header_seen = true;
            continue;
        }
        if record.len() != FIELDS.len() {
            return Err(Invalid::new(
                at,
                Problem::Columns {
                    found: record.len(),
                },
            ));
        }
        let tap = tap_of(&at, &record[0], &record[1])?;
        let from = required_address(&at, FROM_ROUTER, &record[2])?;
        let to = required_address(&at, TO_ROUTER, &record[3])?;
        entries.push(Entry { at, tap, from, to });
    }
    Ok(entries)
}

/// 1-based line of the CSV record the csv crate places at `offset`.
///
/// Its positions are where it started reading, before the comment and blank
/// lines it skipped (and its line numbers do not count them), so skip them
/// here too.
fn csv_record_line(text: &str, lines: &Lines, mut offset: usize) -> usize {
    while let Some(rest) = text.get(offset..) {
        let skipped = rest.starts_with('#') || rest.starts_with('\n') || rest.starts_with("\r\n");
        match rest.find('\n') {
            Some(end) if skipped => offset += end + 1,
            _ => break,
        }
    }
    lines.at(offset.min(text.len()))
}

/// Where a text's lines start, so that the line of an offset is a binary
/// search (an import names lines for every row: linear, not quadratic).
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// 1-based line of a byte offset.
    fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

fn parse_toml_entries(text: &str) -> Result<Vec<Entry>, Box<Invalid>> {
    let lines = Lines::new(text);
    let doc = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| lines.at(s.start));
        Invalid::new(
            Location::TomlLine(line),
            Problem::Syntax(e.message().trim().to_owned()),
        )
    })?;
    let mut links = None;
    for (key, value) in doc.get_ref().iter() {
        if key.get_ref() != "link" {
            return Err(Invalid::new(
                Location::TomlLine(lines.at(key.span().start)),
                Problem::UnknownKey {
                    expected: "only [[link]] tables",
                },
            )
            .field(key.get_ref().as_ref()));
        }
        links = Some(value);
    }
    let Some(links) = links else {
        return Ok(Vec::new());
    };
    let DeValue::Array(array) = links.get_ref() else {
        return Err(Invalid::new(
            Location::TomlLine(lines.at(links.span().start)),
            Problem::WrongType("an array of tables ([[link]])"),
        )
        .field("link"));
    };
    array
        .iter()
        .enumerate()
        .map(|(index, item)| toml_entry(text, &lines, index, item))
        .collect()
}

/// Entry `index` of the `link` array.
fn toml_entry(
    text: &str,
    lines: &Lines,
    index: usize,
    item: &toml::Spanned<DeValue<'_>>,
) -> Result<Entry, Box<Invalid>> {
    let at_span = |span: std::ops::Range<usize>| Location::TomlLink {
        index,
        line: lines.at(span.start),
    };
    let DeValue::Table(table) = item.get_ref() else {
        return Err(Invalid::new(
            at_span(item.span()),
            Problem::WrongType("a table ([[link]])"),
        ));
    };
    // Each field's text ("" when absent) and where to point for it.
    let mut fields: [(String, Location); 4] =
        std::array::from_fn(|_| (String::new(), at_span(item.span())));
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        let Some(slot) = FIELDS.iter().position(|f| *f == name) else {
            return Err(Invalid::new(
                at_span(key.span()),
                Problem::UnknownKey {
                    expected: "monitor_address, link_id, from_router, to_router",
                },
            )
            .field(name));
        };
        let at = at_span(value.span());
        let written = match (slot, value.get_ref()) {
            (1, DeValue::Integer(i)) => {
                // In any radix TOML allows (0x, 0o, 0b), handed on in decimal.
                match u32::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => n.to_string(),
                    Err(_) => {
                        return Err(Invalid::new(at, Problem::NotALinkId)
                            .field(name)
                            .value(i.to_string()));
                    }
                }
            }
            (1, _) => {
                return Err(Invalid::new(at, Problem::NotALinkId)
                    .field(name)
                    .value(raw_text(text, value.span())));
            }
            (_, DeValue::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            (_, DeValue::String(_)) => {
                return Err(Invalid::new(at, Problem::Missing).field(name));
            }
            (_, _) => {
                return Err(
                    Invalid::new(at, Problem::WrongType("a string (an IP address)"))
                        .field(name)
                        .value(raw_text(text, value.span())),
                );
            }
        };
        fields[slot] = (written, at);
    }
    let [
        (monitor, monitor_at),
        (link_id, link_at),
        (from, from_at),
        (to, to_at),
    ] = fields;
    let tap = match tap_of(&at_span(item.span()), &monitor, &link_id) {
        Ok(tap) => tap,
        // Point at the value that is wrong rather than the entry.
        Err(mut e) => {
            if e.value.is_some() {
                e.at = Some(if e.field.as_deref() == Some(LINK_ID) {
                    link_at
                } else {
                    monitor_at
                });
            }
            return Err(e);
        }
    };
    let from = required_address(&from_at, FROM_ROUTER, &from)?;
    let to = required_address(&to_at, TO_ROUTER, &to)?;
    Ok(Entry {
        at: at_span(item.span()),
        tap,
        from,
        to,
    })
}

/// The source text of a value, for error messages.
fn raw_text(text: &str, span: std::ops::Range<usize>) -> String {
    text.get(span).unwrap_or_default().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use bus_schema::TopologyRow;

    use super::*;
    use crate::topology::fixtures::*;

    fn refused_csv(text: &str) -> Invalid {
        match Topology::parse_csv(text) {
            Ok(t) => panic!("accepted:\n{text}\nas {:?}", t.rows()),
            Err(e) => e.invalid().cloned().unwrap_or_else(|| panic!("{e}")),
        }
    }

    fn refused_toml(text: &str) -> Invalid {
        match Topology::parse_toml(text) {
            Ok(t) => panic!("accepted:\n{text}\nas {:?}", t.rows()),
            Err(e) => e.invalid().cloned().unwrap_or_else(|| panic!("{e}")),
        }
    }

    /// The TOML and CSV examples describe the same six rows, in order, and
    /// the same graph; `from_path` picks the format by extension.
    #[test]
    fn both_formats_give_the_same_topology() {
        let toml = figure5();
        let csv = Topology::parse_csv(FIGURE5_CSV).unwrap();
        assert_eq!(toml.rows(), csv.rows());
        assert_eq!(toml.links(), csv.links());
        assert_eq!(toml.rows().len(), 6);
        assert_eq!(
            toml.rows()[5],
            TopologyRow {
                monitor_address: M3.into(),
                link_id: 1,
                from_router: R1.into(),
                to_router: R4.into(),
            }
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/topology");
        let from_toml = Topology::from_path(&dir.join("figure5.toml")).unwrap();
        let from_csv = Topology::from_path(&dir.join("figure5.csv")).unwrap();
        assert_eq!(from_toml.rows(), toml.rows());
        assert_eq!(from_csv.rows(), toml.rows());
    }

    /// Four routers; the six described directions plus the two reverse
    /// CRLF line ends, comments and blank lines do not shift line numbers.
    #[test]
    fn crlf_csv_names_the_right_line() {
        let text = "# figure 5\r\n\r\nmonitor_address,link_id,from_router,to_router\r\n# rows\r\n10.9.0.1,0,10.0.1.1,10.0.2.1\r\n\r\n# bad one\r\n10.9.0.1,1,10.0.2.1,10.0.1\r\n";
        let e = refused_csv(text);
        assert_eq!(e.at, Some(Location::CsvLine(8)), "{e}");
        assert_eq!(e.value.as_deref(), Some("10.0.1"));
        let good = text.replace("10.0.1\r\n", "10.0.1.1\r\n");
        assert_eq!(Topology::parse_csv(&good).unwrap().links().len(), 2);
    }

    /// Rows without monitor declare a line nobody taps (both directions);
    /// two monitors on one direction make one edge seen by both; IPv6
    /// addresses work and are stored in canonical form.
    #[test]
    fn unmonitored_and_shared_rows() {
        let csv = format!(
            "{HEADER}# a comment\n\n,,10.0.1.1,10.0.2.1\n 10.9.0.1 , 3 , 10.0.2.1 , 10.0.3.1\n10.9.0.2,0,10.0.2.1,10.0.3.1\n2001:DB8::9,7,2001:db8::1,10.0.3.1\n"
        );
        let toml = r#"
[[link]]
from_router = "10.0.1.1"
to_router = "10.0.2.1"

[[link]]
monitor_address = "10.9.0.1"
link_id = 3
from_router = "10.0.2.1"
to_router = "10.0.3.1"

[[link]]
monitor_address = "10.9.0.2"
link_id = 0x0
from_router = "10.0.2.1"
to_router = "10.0.3.1"

[[link]]
monitor_address = "2001:DB8::9"
link_id = 7
from_router = "2001:db8::1"
to_router = "10.0.3.1"
"#;
        let a = Topology::parse_csv(&csv).unwrap();
        let b = Topology::parse_toml(toml).unwrap();
        assert_eq!(a.rows(), b.rows());
        assert_eq!(a.links(), b.links());
        assert_eq!(a.rows()[0].monitor_address, "");
        assert_eq!(a.rows()[3].monitor_address, "2001:db8::9");
        let links: Vec<_> = a.links().into_iter().map(hop).collect();
        assert_eq!(
            links,
            vec![
                expect_hop("10.0.1.1", "10.0.2.1", &[]),
                expect_hop("10.0.2.1", "10.0.1.1", &[]),
                expect_hop("10.0.2.1", "10.0.3.1", &[("10.9.0.1", 3), ("10.9.0.2", 0)]),
                expect_hop("10.0.3.1", "10.0.2.1", &[]),
                expect_hop("10.0.3.1", "2001:db8::1", &[]),
                expect_hop("2001:db8::1", "10.0.3.1", &[("2001:db8::9", 7)]),
            ]
        );
        assert_eq!(a.unmonitored_links().len(), 4);
        assert_eq!(tap("2001:db8::9", 7).to_string(), "[2001:db8::9]:7");
        assert!(a.dot().contains("label=\"10.9.0.1:3, 10.9.0.2:0\""));
    }

    /// CSV refusals name the line (comments and blank lines count).
    #[test]
    fn malformed_csv_is_refused_naming_the_line() {
        let good = "10.9.0.1,0,10.0.1.1,10.0.2.1\n";

        // Bad router address on line 3.
        let e = refused_csv(&format!("{HEADER}{good}10.9.0.1,1,10.0.2.1,10.0.1.300\n"));
        assert_eq!(e.at, Some(Location::CsvLine(3)));
        assert_eq!(e.field.as_deref(), Some("to_router"));
        assert_eq!(e.value.as_deref(), Some("10.0.1.300"));
        assert_eq!(e.problem, Problem::NotAnAddress);
        assert_eq!(
            e.to_string(),
            "line 3, to_router = \"10.0.1.300\": not an IP address"
        );

        // Bad monitor address on line 4, after a comment and a blank line.
        let e = refused_csv(&format!("{HEADER}# c\n\nmonitor-a,0,10.0.1.1,10.0.2.1\n"));
        assert_eq!(
            (e.line(), e.field.as_deref()),
            (Some(4), Some("monitor_address"))
        );
        assert_eq!(e.problem, Problem::NotAnAddress);

        // Missing column on line 2.
        let e = refused_csv(&format!("{HEADER}10.9.0.1,0,10.0.1.1\n"));
        assert_eq!(e.at, Some(Location::CsvLine(2)));
        assert_eq!(e.problem, Problem::Columns { found: 3 });
        // One column too many.
        let e = refused_csv(&format!(
            "{HEADER}{good}{good}10.9.0.1,2,10.0.1.1,10.0.2.1,x\n"
        ));
        assert_eq!(
            (e.line(), e.problem),
            (Some(4), Problem::Columns { found: 5 })
        );

        // Non-numeric, negative and too large link ids.
        for id in ["zero", "-1", "4294967296", "1.5"] {
            let e = refused_csv(&format!("{HEADER}{good}10.9.0.1,{id},10.0.2.1,10.0.1.1\n"));
            assert_eq!(e.at, Some(Location::CsvLine(3)), "{id}");
            assert_eq!(e.field.as_deref(), Some("link_id"));
            assert_eq!(e.value.as_deref(), Some(id));
            assert_eq!(e.problem, Problem::NotALinkId);
        }

        // Duplicate (monitor, link id) on line 4, first on line 2.
        let e = refused_csv(&format!(
            "{HEADER}{good}10.9.0.2,0,10.0.2.1,10.0.3.1\n10.9.0.1,0,10.0.2.1,10.0.1.1\n"
        ));
        assert_eq!(e.at, Some(Location::CsvLine(4)));
        assert_eq!(
            e.problem,
            Problem::DuplicateTap {
                tap: tap(M1, 0),
                first: Location::CsvLine(2)
            }
        );
        assert_eq!(
            e.to_string(),
            "line 4: monitor 10.9.0.1 link 0 is already described at line 2"
        );

        // Self-loop on line 2.
        let e = refused_csv(&format!("{HEADER}10.9.0.1,0,10.0.1.1,10.0.1.1\n"));
        assert_eq!((e.line(), e.problem), (Some(2), Problem::SelfLoop));

        // Monitor without link id, and link id without monitor.
        let e = refused_csv(&format!("{HEADER}10.9.0.1,,10.0.1.1,10.0.2.1\n"));
        assert_eq!((e.line(), e.problem), (Some(2), Problem::HalfTap));
        let e = refused_csv(&format!("{HEADER},4,10.0.1.1,10.0.2.1\n"));
        assert_eq!((e.line(), e.problem), (Some(2), Problem::HalfTap));

        // Empty router.
        let e = refused_csv(&format!("{HEADER}10.9.0.1,0,,10.0.2.1\n"));
        assert_eq!(
            (e.line(), e.field.as_deref()),
            (Some(2), Some("from_router"))
        );
        assert_eq!(e.problem, Problem::Missing);

        // No header, or a wrong one, after a comment.
        let e = refused_csv(&format!("# topology\n{good}"));
        assert_eq!((e.line(), e.problem), (Some(2), Problem::Header));
        let e = refused_csv("monitor,link,from,to\n");
        assert_eq!((e.line(), e.problem), (Some(1), Problem::Header));

        // Unterminated quote.
        let e = refused_csv(&format!("{HEADER}{good}\"10.9.0.1,1,10.0.2.1,10.0.1.1\n"));
        assert!(e.line().is_some_and(|l| l >= 3), "{e}");

        // Header only.
        let e = refused_csv(HEADER);
        assert_eq!((e.at, e.problem), (None, Problem::NoLinks));
    }

    fn toml_link(monitor: &str, id: &str, from: &str, to: &str) -> String {
        format!(
            "[[link]]\nmonitor_address = {monitor}\nlink_id = {id}\nfrom_router = {from}\nto_router = {to}\n\n"
        )
    }

    /// TOML refusals name the entry, the key and the line.
    #[test]
    fn malformed_toml_is_refused_naming_the_entry() {
        let q = |s: &str| format!("\"{s}\"");
        // Entries start on lines 1, 7, 13, 19 (six lines each).
        let good = [
            toml_link(&q(M1), "0", &q(R1), &q(R2)),
            toml_link(&q(M1), "1", &q(R2), &q(R1)),
            toml_link(&q(M2), "0", &q(R2), &q(R3)),
        ]
        .concat();

        // Bad router address: link[3].to_router, on line 23.
        let text = format!("{good}{}", toml_link(&q(M2), "1", &q(R3), &q("10.0.2")));
        let e = refused_toml(&text);
        assert_eq!(e.at, Some(Location::TomlLink { index: 3, line: 23 }));
        assert_eq!(e.field.as_deref(), Some("to_router"));
        assert_eq!(e.problem, Problem::NotAnAddress);
        assert_eq!(
            e.to_string(),
            "line 23, link[3].to_router = \"10.0.2\": not an IP address"
        );

        // Bad monitor address on line 20.
        let e = refused_toml(&format!(
            "{good}{}",
            toml_link(&q("m2"), "1", &q(R3), &q(R2))
        ));
        assert_eq!(e.at, Some(Location::TomlLink { index: 3, line: 20 }));
        assert_eq!(e.field.as_deref(), Some("monitor_address"));

        // A non-numeric link id (a string) and a negative one, line 21.
        for id in [
            q("0"),
            "-1".to_owned(),
            "4294967296".to_owned(),
            "1.0".to_owned(),
        ] {
            let e = refused_toml(&format!("{good}{}", toml_link(&q(M2), &id, &q(R3), &q(R2))));
            assert_eq!(
                e.at,
                Some(Location::TomlLink { index: 3, line: 21 }),
                "{id}"
            );
            assert_eq!(e.field.as_deref(), Some("link_id"));
            assert_eq!(e.problem, Problem::NotALinkId);
        }

        // A missing key: link[1] has no to_router.
        let text = format!(
            "{}[[link]]\nmonitor_address = \"{M1}\"\nlink_id = 1\nfrom_router = \"{R2}\"\n",
            toml_link(&q(M1), "0", &q(R1), &q(R2))
        );
        let e = refused_toml(&text);
        assert!(
            matches!(e.at, Some(Location::TomlLink { index: 1, .. })),
            "{e}"
        );
        assert_eq!(
            (e.field.as_deref(), e.problem),
            (Some("to_router"), Problem::Missing)
        );

        // Monitor without link id.
        let text = format!(
            "[[link]]\nmonitor_address = \"{M1}\"\nfrom_router = \"{R1}\"\nto_router = \"{R2}\"\n"
        );
        assert_eq!(refused_toml(&text).problem, Problem::HalfTap);

        // Duplicate (monitor, link id): link[3] repeats link[0].
        let e = refused_toml(&format!("{good}{}", toml_link(&q(M1), "0", &q(R3), &q(R2))));
        match e.problem {
            Problem::DuplicateTap {
                tap: t,
                first: Location::TomlLink { index: 0, line: 1 },
            } => assert_eq!(t, tap(M1, 0)),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(e.at, Some(Location::TomlLink { index: 3, line: 19 })),
            "{e}"
        );

        // Self-loop.
        let e = refused_toml(&format!("{good}{}", toml_link(&q(M2), "1", &q(R3), &q(R3))));
        assert_eq!(e.problem, Problem::SelfLoop);
        assert!(
            matches!(e.at, Some(Location::TomlLink { index: 3, .. })),
            "{e}"
        );

        // A misspelt key, on line 22.
        let text = good.clone()
            + &toml_link(&q(M2), "1", &q(R3), &q(R2)).replace("from_router", "from_ruoter");
        let e = refused_toml(&text);
        assert_eq!(e.at, Some(Location::TomlLink { index: 3, line: 22 }));
        assert_eq!(e.field.as_deref(), Some("from_ruoter"));

        // An address that is not a string.
        let e = refused_toml(&format!("{good}{}", toml_link(&q(M2), "1", "10", &q(R2))));
        assert_eq!(e.field.as_deref(), Some("from_router"));
        assert!(matches!(e.problem, Problem::WrongType(_)));

        // Anything but [[link]] at the top.
        let e = refused_toml(&format!("{good}[[line]]\nfrom_router = \"{R1}\"\n"));
        assert_eq!(e.at, Some(Location::TomlLine(19)));
        assert_eq!(e.field.as_deref(), Some("line"));
        let e = refused_toml("link = 3\n");
        assert!(matches!(e.problem, Problem::WrongType(_)));

        // A syntax error on line 3.
        let e = refused_toml("[[link]]\nfrom_router = \"10.0.1.1\"\nto_router = \n");
        assert_eq!(e.at, Some(Location::TomlLine(3)), "{e}");
        assert!(matches!(e.problem, Problem::Syntax(_)));

        // Nothing at all.
        assert_eq!(refused_toml("# empty\n").problem, Problem::NoLinks);
    }

    /// `from_path` names the file in its errors and wants a known extension.
    #[test]
    fn from_path_names_the_file() {
        let dir = std::env::temp_dir().join(format!("tm-topology-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.csv");
        std::fs::write(&bad, format!("{HEADER}10.9.0.1,x,10.0.1.1,10.0.2.1\n")).unwrap();
        let e = Topology::from_path(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: line 2, link_id = \"x\": not a link id (an integer from 0 to 4294967295)",
                bad.display()
            )
        );
        assert_eq!(e.invalid().unwrap().file.as_deref(), Some(bad.as_path()));

        let other = dir.join("topology.json");
        std::fs::write(&other, "{}").unwrap();
        assert!(matches!(
            Topology::from_path(&other),
            Err(TopologyError::Format { .. })
        ));
        assert!(matches!(
            Topology::from_path(&dir.join("missing.toml")),
            Err(TopologyError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
