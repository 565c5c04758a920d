//! The network topology: routers are vertices, links are directed edges.
//!
//! One direction of a physical line is identified by the monitor that taps
//! it and that monitor's link id, and described by the routers it goes from
//! and to: the seed's figure-5 table. The same table is imported from a file,
//! stored in KV (`tm_topology`, key `current`, as a [`TopologyRecord`]) so
//! every manager sees one topology, and held here as a petgraph [`DiGraph`]
//! for the queries management apps and `tmctl` ask.
//!
//! # File formats
//!
//! CSV, with this header line and one row per direction; lines starting with
//! `#` are comments, blank lines are skipped, fields are trimmed:
//!
//! ```text
//! monitor_address,link_id,from_router,to_router
//! 10.9.0.1,0,10.0.1.1,10.0.2.1
//! ,,10.0.5.1,10.0.6.1
//! ```
//!
//! TOML, one `[[link]]` table per row with the same four keys:
//!
//! ```toml
//! [[link]]
//! monitor_address = "10.9.0.1"
//! link_id = 0
//! from_router = "10.0.1.1"
//! to_router = "10.0.2.1"
//!
//! [[link]]            # a line nobody taps
//! from_router = "10.0.5.1"
//! to_router = "10.0.6.1"
//! ```
//!
//! # Rules
//!
//! * Router and monitor addresses are IPv4 or IPv6 addresses; a router is
//!   identified by its address. The link id is an integer from 0 to 2³²−1.
//! * A row without monitor address and link id (empty CSV fields, or a
//!   `[[link]]` without those keys) declares a direction that exists but that
//!   no monitor taps, so that lines without any monitor can be described. In
//!   a [`TopologyRow`] it has an empty `monitor_address` and `link_id` 0.
//! * Physical lines are bidirectional: when only one direction of a line
//!   appears in the table, the other direction exists too, unmonitored.
//! * Each (monitor address, link id) pair describes one direction only; a
//!   row that repeats a pair is refused. Several rows may describe the same
//!   direction (two monitors tapping it): it is one edge seen by both.
//! * A row whose two routers are the same (a self-loop) is refused.
//! * A table without any row is refused.
//!
//! Every refusal names the place: the line of a CSV file; the entry and line
//! of a TOML file (`line 14, link[3].to_router`, entries counted from 0); the
//! row of a record (`rows[3].to_router`), with the field and the value.
//!
//! # Paths
//!
//! [`Topology::shortest_path`] counts hops. Among equally short paths it
//! takes the one whose sequence of router addresses is smallest, comparing
//! address by address in numeric order (IPv4 before IPv6), so the answer
//! depends on the topology only, never on the order of the rows.
//! [`Topology::flow_path`] assumes a flow follows that path.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path as FsPath, PathBuf};

use async_nats::jetstream::{self, kv};
use bus_schema::store::{TOPOLOGY_BUCKET, TOPOLOGY_KEY};
use bus_schema::{TopologyRecord, TopologyRow};
use petgraph::Direction;
use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use toml::de::{DeTable, DeValue};

/// The CSV header line, and the field names of both formats.
pub const CSV_HEADER: &str = "monitor_address,link_id,from_router,to_router";

const MONITOR_ADDRESS: &str = "monitor_address";
const LINK_ID: &str = "link_id";
const FROM_ROUTER: &str = "from_router";
const TO_ROUTER: &str = "to_router";
const FIELDS: [&str; 4] = [MONITOR_ADDRESS, LINK_ID, FROM_ROUTER, TO_ROUTER];

/// One monitored direction: a monitor's address and its link id there.
///
/// Displayed `10.9.0.1:0` (`[2001:db8::1]:0` for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tap {
    /// Monitor address.
    pub monitor: IpAddr,
    /// Link id within that monitor.
    pub link_id: u32,
}

impl fmt::Display for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.monitor {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.link_id),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.link_id),
        }
    }
}

/// A directed link: one direction of a line between two routers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Router the traffic comes from.
    pub from: IpAddr,
    /// Router the traffic goes to.
    pub to: IpAddr,
    /// The taps that see this direction, sorted; empty if nobody monitors it.
    pub seen_by: Vec<Tap>,
    /// Whether a row describes it (`false`: it is the reverse of a line
    /// that appears in one direction only).
    pub declared: bool,
}

impl Link {
    /// Whether some monitor taps this direction.
    #[must_use]
    pub fn is_monitored(&self) -> bool {
        !self.seen_by.is_empty()
    }
}

/// The routers adjacent to one router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbours {
    /// Routers this router has a link to, sorted.
    pub outgoing: Vec<IpAddr>,
    /// Routers that have a link to this router, sorted.
    pub incoming: Vec<IpAddr>,
}

/// A path between two routers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path<'t> {
    /// The routers, first to last (one router for a path to itself).
    pub routers: Vec<IpAddr>,
    /// The links traversed, one fewer than the routers.
    pub links: Vec<&'t Link>,
}

/// A query named something the topology does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No router has this address.
    #[error("no router {0} in the topology")]
    UnknownRouter(IpAddr),
    /// No sequence of links leads from one router to the other.
    #[error("no path from {from} to {to}")]
    NoPath {
        /// Start router.
        from: IpAddr,
        /// End router.
        to: IpAddr,
    },
}

/// Where in the input a refused entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A line of a CSV file, from 1.
    CsvLine(usize),
    /// An entry of a TOML file's `link` array (from 0) and the line (from 1)
    /// of the value at fault, or where the entry starts.
    TomlLink {
        /// Index in the `link` array.
        index: usize,
        /// Line in the file.
        line: usize,
    },
    /// A line of a TOML file outside the `link` entries, from 1.
    TomlLine(usize),
    /// A row of a [`TopologyRecord`], from 0.
    Row(usize),
}

impl Location {
    /// The line in the file, if the input was a file.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        match *self {
            Location::CsvLine(line)
            | Location::TomlLine(line)
            | Location::TomlLink { line, .. } => Some(line),
            Location::Row(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::CsvLine(line) | Location::TomlLine(line) => write!(f, "line {line}"),
            Location::TomlLink { index, line } => write!(f, "line {line}, link[{index}]"),
            Location::Row(index) => write!(f, "rows[{index}]"),
        }
    }
}

/// What is wrong with a refused entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Not an IPv4 or IPv6 address.
    #[error("not an IP address")]
    NotAnAddress,
    /// Not an integer from 0 to 2³²−1.
    #[error("not a link id (an integer from 0 to {})", u32::MAX)]
    NotALinkId,
    /// A required field is absent or empty.
    #[error("missing")]
    Missing,
    /// Only one of monitor address and link id is given.
    #[error(
        "monitor_address and link_id go together: give both, or neither for a link nobody monitors"
    )]
    HalfTap,
    /// A record row without monitor has a link id other than 0.
    #[error("must be 0 when monitor_address is empty (a link nobody monitors)")]
    LinkIdWithoutMonitor,
    /// Both routers are the same.
    #[error("from_router and to_router are the same router (a self-loop)")]
    SelfLoop,
    /// The (monitor, link id) pair was already used.
    #[error("monitor {} link {} is already described at {first}", .tap.monitor, .tap.link_id)]
    DuplicateTap {
        /// The pair.
        tap: Tap,
        /// Where it was described first.
        first: Location,
    },
    /// A CSV row without exactly four fields.
    #[error("{found} column(s), expected 4 ({CSV_HEADER})")]
    Columns {
        /// How many there are.
        found: usize,
    },
    /// The CSV file does not start with the header line.
    #[error("expected the header line {CSV_HEADER}")]
    Header,
    /// A TOML key that is not part of the format.
    #[error("unknown key (expected {})", .expected)]
    UnknownKey {
        /// What is allowed there.
        expected: &'static str,
    },
    /// A TOML value of the wrong type.
    #[error("expected {0}")]
    WrongType(&'static str),
    /// The file is not valid CSV or TOML.
    #[error("{0}")]
    Syntax(String),
    /// Nothing was described.
    #[error("no links: the topology needs at least one row")]
    NoLinks,
}

/// A refused topology entry: the file, where in it, the field and value at
/// fault, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The file, when read from one.
    pub file: Option<PathBuf>,
    /// Where in the input (none for a problem of the whole input).
    pub at: Option<Location>,
    /// The field or key at fault.
    pub field: Option<String>,
    /// The value at fault, as written.
    pub value: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl Invalid {
    fn new(at: Location, problem: Problem) -> Box<Self> {
        Box::new(Self {
            file: None,
            at: Some(at),
            field: None,
            value: None,
            problem,
        })
    }

    fn field(mut self: Box<Self>, field: impl Into<String>) -> Box<Self> {
        self.field = Some(field.into());
        self
    }

    fn value(mut self: Box<Self>, value: impl Into<String>) -> Box<Self> {
        self.value = Some(value.into());
        self
    }

    /// The line in the file, if the input was a file and the problem has one.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.at.as_ref().and_then(Location::line)
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        let mut named = false;
        if let Some(at) = &self.at {
            write!(f, "{at}")?;
            named = true;
        }
        if let Some(field) = &self.field {
            let sep = match self.at {
                Some(Location::TomlLink { .. } | Location::Row(_)) => ".",
                Some(_) => ", ",
                None => "",
            };
            write!(f, "{sep}{field}")?;
            named = true;
        }
        if let Some(value) = &self.value {
            write!(f, " = {value:?}")?;
            named = true;
        }
        if named {
            f.write_str(": ")?;
        }
        write!(f, "{}", self.problem)
    }
}

impl std::error::Error for Invalid {}

/// A topology could not be read or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file's extension is neither `.toml` nor `.csv`.
    #[error("{}: unknown topology format: expected a .toml or .csv file", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// An entry was refused.
    #[error(transparent)]
    Invalid(Box<Invalid>),
}

impl TopologyError {
    /// The refused entry, if that is what went wrong.
    #[must_use]
    pub fn invalid(&self) -> Option<&Invalid> {
        match self {
            TopologyError::Invalid(invalid) => Some(invalid),
            _ => None,
        }
    }
}

impl From<Box<Invalid>> for TopologyError {
    fn from(invalid: Box<Invalid>) -> Self {
        TopologyError::Invalid(invalid)
    }
}

/// A validated row with where it came from.
struct Entry {
    at: Location,
    tap: Option<Tap>,
    from: IpAddr,
    to: IpAddr,
}

/// The topology, validated and held as a directed graph.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The rows as imported, addresses in canonical form.
    rows: Vec<TopologyRow>,
    /// Routers (added in address order) and directed links (added in
    /// (from, to) order), at most one edge per direction.
    graph: DiGraph<IpAddr, Link>,
    routers: BTreeMap<IpAddr, NodeIndex>,
    taps: BTreeMap<Tap, EdgeIndex>,
}

impl Topology {
    /// Builds the topology from rows (as stored in a [`TopologyRecord`]).
    ///
    /// # Errors
    /// A row breaks a rule of the module documentation; the error names it
    /// as `rows[i]`.
    pub fn from_rows(rows: &[TopologyRow]) -> Result<Self, TopologyError> {
        let entries = rows
            .iter()
            .enumerate()
            .map(|(i, row)| entry_of_row(Location::Row(i), row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::build(entries)?)
    }

    /// Builds the topology from a stored record.
    ///
    /// # Errors
    /// As [`Topology::from_rows`].
    pub fn from_record(record: &TopologyRecord) -> Result<Self, TopologyError> {
        Self::from_rows(&record.rows)
    }

    /// The record to store: the rows with addresses in canonical form.
    #[must_use]
    pub fn to_record(&self, imported_by: &str, imported_unix_ms: u64) -> TopologyRecord {
        TopologyRecord {
            rows: self.rows.clone(),
            imported_unix_ms,
            imported_by: imported_by.to_owned(),
        }
    }

    /// Parses the CSV form (see the module documentation).
    ///
    /// # Errors
    /// Malformed CSV or a refused row, naming the line.
    pub fn parse_csv(text: &str) -> Result<Self, TopologyError> {
        Ok(Self::build(parse_csv_entries(text)?)?)
    }

    /// Parses the TOML form (see the module documentation).
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
    pub fn from_path(path: &FsPath) -> Result<Self, TopologyError> {
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

    fn build(entries: Vec<Entry>) -> Result<Self, Box<Invalid>> {
        if entries.is_empty() {
            return Err(Box::new(Invalid {
                file: None,
                at: None,
                field: None,
                value: None,
                problem: Problem::NoLinks,
            }));
        }
        let mut first_seen: HashMap<Tap, Location> = HashMap::new();
        // (from, to) → taps; BTreeMap so edges are added in address order.
        let mut directions: BTreeMap<(IpAddr, IpAddr), Vec<Tap>> = BTreeMap::new();
        let mut rows = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.from == entry.to {
                return Err(Invalid::new(entry.at, Problem::SelfLoop)
                    .field(TO_ROUTER)
                    .value(entry.to.to_string()));
            }
            let taps = directions.entry((entry.from, entry.to)).or_default();
            if let Some(tap) = entry.tap {
                if let Some(first) = first_seen.get(&tap) {
                    return Err(Invalid::new(
                        entry.at,
                        Problem::DuplicateTap {
                            tap,
                            first: first.clone(),
                        },
                    ));
                }
                first_seen.insert(tap, entry.at);
                taps.push(tap);
            }
            rows.push(TopologyRow {
                monitor_address: entry.tap.map(|t| t.monitor.to_string()).unwrap_or_default(),
                link_id: entry.tap.map_or(0, |t| t.link_id),
                from_router: entry.from.to_string(),
                to_router: entry.to.to_string(),
            });
        }
        // Physical lines are bidirectional: a direction that is not
        // described exists all the same, unmonitored.
        let declared: Vec<(IpAddr, IpAddr)> = directions.keys().copied().collect();
        let mut links: BTreeMap<(IpAddr, IpAddr), Link> = BTreeMap::new();
        for (from, to) in declared {
            let mut seen_by = directions.remove(&(from, to)).unwrap_or_default();
            seen_by.sort_unstable();
            links.insert(
                (from, to),
                Link {
                    from,
                    to,
                    seen_by,
                    declared: true,
                },
            );
        }
        let reverses: Vec<(IpAddr, IpAddr)> = links
            .keys()
            .filter(|(from, to)| !links.contains_key(&(*to, *from)))
            .map(|&(from, to)| (to, from))
            .collect();
        for (from, to) in reverses {
            links.insert(
                (from, to),
                Link {
                    from,
                    to,
                    seen_by: Vec::new(),
                    declared: false,
                },
            );
        }

        let addresses: BTreeSet<IpAddr> = links.keys().flat_map(|&(a, b)| [a, b]).collect();
        let mut graph = DiGraph::with_capacity(addresses.len(), links.len());
        let routers: BTreeMap<IpAddr, NodeIndex> = addresses
            .into_iter()
            .map(|a| (a, graph.add_node(a)))
            .collect();
        let mut taps = BTreeMap::new();
        for ((from, to), link) in links {
            let seen_by = link.seen_by.clone();
            let edge = graph.add_edge(routers[&from], routers[&to], link);
            for tap in seen_by {
                taps.insert(tap, edge);
            }
        }
        Ok(Self {
            rows,
            graph,
            routers,
            taps,
        })
    }

    /// The rows as imported (canonical addresses; an unmonitored row has an
    /// empty monitor address and link id 0).
    #[must_use]
    pub fn rows(&self) -> &[TopologyRow] {
        &self.rows
    }

    /// The routers, sorted by address.
    #[must_use]
    pub fn routers(&self) -> Vec<IpAddr> {
        self.routers.keys().copied().collect()
    }

    /// The monitors that tap some link, sorted by address.
    #[must_use]
    pub fn monitors(&self) -> Vec<IpAddr> {
        let set: BTreeSet<IpAddr> = self.taps.keys().map(|t| t.monitor).collect();
        set.into_iter().collect()
    }

    /// Every directed link, sorted by (from, to).
    #[must_use]
    pub fn links(&self) -> Vec<&Link> {
        // Edges were added in (from, to) order.
        self.graph.edge_weights().collect()
    }

    /// The link a monitor's link id taps.
    #[must_use]
    pub fn link(&self, monitor: IpAddr, link_id: u32) -> Option<&Link> {
        self.taps
            .get(&Tap { monitor, link_id })
            .map(|&e| &self.graph[e])
    }

    /// The routers a router has links to and from.
    ///
    /// # Errors
    /// [`QueryError::UnknownRouter`].
    pub fn neighbours(&self, router: IpAddr) -> Result<Neighbours, QueryError> {
        let node = self.node(router)?;
        let adjacent = |dir| {
            let mut v: Vec<IpAddr> = self
                .graph
                .neighbors_directed(node, dir)
                .map(|n| self.graph[n])
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Ok(Neighbours {
            outgoing: adjacent(Direction::Outgoing),
            incoming: adjacent(Direction::Incoming),
        })
    }

    /// The path with the fewest links from one router to another; among
    /// equally short paths, the one with the smallest sequence of router
    /// addresses.
    ///
    /// # Errors
    /// [`QueryError::UnknownRouter`] or [`QueryError::NoPath`].
    pub fn shortest_path(&self, from: IpAddr, to: IpAddr) -> Result<Path<'_>, QueryError> {
        let start = self.node(from)?;
        let goal = self.node(to)?;
        // Breadth-first search visiting successors in address order: the
        // queue then holds each distance's routers in the order of their
        // smallest shortest path, so the first parent found for a router is
        // on its smallest shortest path.
        let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut seen = BTreeSet::from([start]);
        while let Some(node) = queue.pop_front() {
            if node == goal {
                break;
            }
            let mut next: Vec<NodeIndex> = self.graph.neighbors(node).collect();
            next.sort_unstable_by_key(|&n| self.graph[n]);
            for n in next {
                if seen.insert(n) {
                    parent.insert(n, node);
                    queue.push_back(n);
                }
            }
        }
        if !seen.contains(&goal) {
            return Err(QueryError::NoPath { from, to });
        }
        let mut nodes = vec![goal];
        let mut node = goal;
        while let Some(&p) = parent.get(&node) {
            nodes.push(p);
            node = p;
        }
        nodes.reverse();
        let links = nodes
            .windows(2)
            .map(|w| {
                let edge = self
                    .graph
                    .find_edge(w[0], w[1])
                    .expect("a BFS parent is joined to its child by an edge");
                &self.graph[edge]
            })
            .collect();
        Ok(Path {
            routers: nodes.into_iter().map(|n| self.graph[n]).collect(),
            links,
        })
    }

    /// The links a monitor taps, with their link ids, sorted by link id
    /// (empty for an address that taps nothing).
    #[must_use]
    pub fn links_of_monitor(&self, monitor: IpAddr) -> Vec<(u32, &Link)> {
        let range = Tap {
            monitor,
            link_id: 0,
        }..=Tap {
            monitor,
            link_id: u32::MAX,
        };
        self.taps
            .range(range)
            .map(|(tap, &e)| (tap.link_id, &self.graph[e]))
            .collect()
    }

    /// The links no monitor taps, sorted by (from, to).
    #[must_use]
    pub fn unmonitored_links(&self) -> Vec<&Link> {
        self.graph
            .edge_weights()
            .filter(|l| !l.is_monitored())
            .collect()
    }

    /// The hops of a flow from one router to another, each with the taps
    /// that see it: the flow is taken to follow
    /// [`Topology::shortest_path`] (fewest hops, same tie-break).
    ///
    /// # Errors
    /// [`QueryError::UnknownRouter`] or [`QueryError::NoPath`].
    pub fn flow_path(
        &self,
        src_router: IpAddr,
        dst_router: IpAddr,
    ) -> Result<Vec<&Link>, QueryError> {
        Ok(self.shortest_path(src_router, dst_router)?.links)
    }

    /// The figure-5 table as aligned text: a header, the monitored rows in
    /// import order, then each link nobody monitors with `-` for monitor
    /// address and link id.
    #[must_use]
    pub fn table(&self) -> String {
        let header = ["monitor address", "link id", "from router", "to router"].map(str::to_owned);
        let mut lines = vec![header];
        for row in self.rows.iter().filter(|r| !r.monitor_address.is_empty()) {
            lines.push([
                row.monitor_address.clone(),
                row.link_id.to_string(),
                row.from_router.clone(),
                row.to_router.clone(),
            ]);
        }
        for link in self.unmonitored_links() {
            lines.push([
                "-".to_owned(),
                "-".to_owned(),
                link.from.to_string(),
                link.to.to_string(),
            ]);
        }
        let mut widths = [0; 4];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i + 1 < line.len() {
                    let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
                } else {
                    text.push_str(cell);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    /// Graphviz: a digraph with the routers as nodes and each directed link
    /// as an edge labelled with the taps that see it (`monitor:link id`), or
    /// `unmonitored` (dashed).
    #[must_use]
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph topology {\n    node [shape=box];\n");
        for router in self.routers.keys() {
            let _ = writeln!(out, "    \"{router}\";");
        }
        for link in self.graph.edge_weights() {
            let (label, style) = if link.is_monitored() {
                let taps: Vec<String> = link.seen_by.iter().map(Tap::to_string).collect();
                (taps.join(", "), "")
            } else {
                ("unmonitored".to_owned(), ", style=dashed")
            };
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\" [label=\"{label}\"{style}];",
                link.from, link.to
            );
        }
        out.push_str("}\n");
        out
    }

    fn node(&self, router: IpAddr) -> Result<NodeIndex, QueryError> {
        self.routers
            .get(&router)
            .copied()
            .ok_or(QueryError::UnknownRouter(router))
    }
}

fn parse_address(at: &Location, field: &str, value: &str) -> Result<IpAddr, Box<Invalid>> {
    value.parse().map_err(|_| {
        Invalid::new(at.clone(), Problem::NotAnAddress)
            .field(field)
            .value(value)
    })
}

/// Validates a stored row.
fn entry_of_row(at: Location, row: &TopologyRow) -> Result<Entry, Box<Invalid>> {
    let tap = if row.monitor_address.is_empty() {
        if row.link_id != 0 {
            return Err(Invalid::new(at, Problem::LinkIdWithoutMonitor)
                .field(LINK_ID)
                .value(row.link_id.to_string()));
        }
        None
    } else {
        Some(Tap {
            monitor: parse_address(&at, MONITOR_ADDRESS, &row.monitor_address)?,
            link_id: row.link_id,
        })
    };
    let from = required_address(&at, FROM_ROUTER, &row.from_router)?;
    let to = required_address(&at, TO_ROUTER, &row.to_router)?;
    Ok(Entry { at, tap, from, to })
}

fn required_address(at: &Location, field: &str, value: &str) -> Result<IpAddr, Box<Invalid>> {
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
    let mut entries = Vec::with_capacity(array.len());
    for (index, item) in array.iter().enumerate() {
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
        entries.push(Entry {
            at: at_span(item.span()),
            tap,
            from,
            to,
        });
    }
    Ok(entries)
}

/// The source text of a value, for error messages.
fn raw_text(text: &str, span: std::ops::Range<usize>) -> String {
    text.get(span).unwrap_or_default().trim().to_owned()
}

/// The topology as stored in KV, with the revision to update it from.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The record.
    pub record: TopologyRecord,
    /// The record, validated.
    pub topology: Topology,
    /// Its KV revision: pass it to [`save`] to replace it.
    pub revision: u64,
}

/// A KV operation on the topology failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket could not be created.
    #[error("cannot open: {0}")]
    Bucket(#[source] bus_schema::nats::StoreError),
    /// Someone else wrote the topology since it was read (or it exists
    /// when creating it): load it again and decide.
    #[error(
        "{TOPOLOGY_BUCKET}/{TOPOLOGY_KEY} changed concurrently (expected {}); load it again",
        expected_text(*.expected)
    )]
    Conflict {
        /// The revision the writer expected (`None`: expected none stored).
        expected: Option<u64>,
    },
    /// Creating the key failed otherwise.
    #[error("cannot create {TOPOLOGY_BUCKET}/{TOPOLOGY_KEY}: {0}")]
    Create(#[source] kv::CreateError),
    /// Updating the key failed otherwise.
    #[error("cannot update {TOPOLOGY_BUCKET}/{TOPOLOGY_KEY}: {0}")]
    Update(#[source] kv::UpdateError),
    /// Reading the key failed.
    #[error("cannot read {TOPOLOGY_BUCKET}/{TOPOLOGY_KEY}: {0}")]
    Read(#[source] kv::EntryError),
    /// The record could not be encoded.
    #[error(transparent)]
    Encode(#[from] bus_schema::EncodeError),
    /// The stored bytes are not a topology record.
    #[error(transparent)]
    Decode(#[from] bus_schema::DecodeError),
    /// The record is not a valid topology.
    #[error("topology record refused: {0}")]
    Invalid(#[source] TopologyError),
}

fn expected_text(expected: Option<u64>) -> String {
    expected.map_or_else(
        || "no topology stored".to_owned(),
        |r| format!("revision {r}"),
    )
}

/// Opens the `tm_topology` bucket, creating it with the contract's settings
/// ([`bus_schema::store::buckets`]) if it is missing.
///
/// # Errors
/// [`KvError::Bucket`] if it can neither be opened nor created.
pub async fn open_bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, KvError> {
    bus_schema::nats::open_kv(js, TOPOLOGY_BUCKET, replicas)
        .await
        .map_err(KvError::Bucket)
}

/// Stores a topology record under `current`: created if `expected_revision`
/// is `None` (refused if one is stored), else updated only if the stored
/// revision is still `expected_revision`. Never a blind put. The record is
/// validated first. Returns the new revision.
///
/// # Errors
/// [`KvError::Invalid`] for a refused record, [`KvError::Conflict`] if the
/// stored topology is not the expected one, or a bus error.
pub async fn save(
    kv: &kv::Store,
    record: &TopologyRecord,
    expected_revision: Option<u64>,
) -> Result<u64, KvError> {
    Topology::from_record(record).map_err(KvError::Invalid)?;
    let bytes = bus_schema::encode(record)?;
    match expected_revision {
        None => kv
            .create(TOPOLOGY_KEY, bytes.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => KvError::Conflict { expected: None },
                _ => KvError::Create(e),
            }),
        Some(revision) => kv
            .update(TOPOLOGY_KEY, bytes.into(), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    expected: Some(revision),
                },
                _ => KvError::Update(e),
            }),
    }
}

/// Loads the stored topology, if any (a deleted or purged key is none).
///
/// # Errors
/// A bus error, undecodable bytes, or a stored record that is not a valid
/// topology.
pub async fn load(kv: &kv::Store) -> Result<Option<Stored>, KvError> {
    let Some(entry) = kv.entry(TOPOLOGY_KEY).await.map_err(KvError::Read)? else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let record: TopologyRecord = bus_schema::decode(&entry.value)?;
    let topology = Topology::from_record(&record).map_err(KvError::Invalid)?;
    Ok(Some(Stored {
        record,
        topology,
        revision: entry.revision,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIGURE5_TOML: &str = include_str!("../../examples/topology/figure5.toml");
    const FIGURE5_CSV: &str = include_str!("../../examples/topology/figure5.csv");

    // The seed's figure-1 network: a ring R1 - R2 - R3 - R4 - R1.
    //
    //   R1 --L12-- R2
    //   |           |
    //  L14         L23
    //   |           |
    //   R4 --L34-- R3
    const R1: &str = "10.0.1.1";
    const R2: &str = "10.0.2.1";
    const R3: &str = "10.0.3.1";
    const R4: &str = "10.0.4.1";
    // M1 taps both directions of L12, M2 both of L23, M3 R3→R4 and R1→R4.
    const M1: &str = "10.9.0.1";
    const M2: &str = "10.9.0.2";
    const M3: &str = "10.9.0.3";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tap(monitor: &str, link_id: u32) -> Tap {
        Tap {
            monitor: ip(monitor),
            link_id,
        }
    }

    fn figure5() -> Topology {
        Topology::parse_toml(FIGURE5_TOML).unwrap()
    }

    /// A link as (from, to, taps) for literal expectations.
    fn hop(link: &Link) -> (IpAddr, IpAddr, Vec<Tap>) {
        (link.from, link.to, link.seen_by.clone())
    }

    fn expect_hop(from: &str, to: &str, taps: &[(&str, u32)]) -> (IpAddr, IpAddr, Vec<Tap>) {
        (
            ip(from),
            ip(to),
            taps.iter().map(|&(m, l)| tap(m, l)).collect(),
        )
    }

    fn routers(path: &Path<'_>) -> Vec<IpAddr> {
        path.routers.clone()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

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

    const HEADER: &str = "monitor_address,link_id,from_router,to_router\n";

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
    /// directions nobody describes (R4→R1 of L14, R4→R3 of L34): eight links.
    #[test]
    fn figure5_graph() {
        let t = figure5();
        assert_eq!(t.routers(), ips(&[R1, R2, R3, R4]));
        assert_eq!(t.monitors(), ips(&[M1, M2, M3]));
        let links: Vec<_> = t.links().into_iter().map(hop).collect();
        assert_eq!(
            links,
            vec![
                expect_hop(R1, R2, &[(M1, 0)]),
                expect_hop(R1, R4, &[(M3, 1)]),
                expect_hop(R2, R1, &[(M1, 1)]),
                expect_hop(R2, R3, &[(M2, 0)]),
                expect_hop(R3, R2, &[(M2, 1)]),
                expect_hop(R3, R4, &[(M3, 0)]),
                expect_hop(R4, R1, &[]),
                expect_hop(R4, R3, &[]),
            ]
        );
        let declared: Vec<bool> = t.links().iter().map(|l| l.declared).collect();
        assert_eq!(declared, [true, true, true, true, true, true, false, false]);
    }

    /// In a ring every router has the two routers next to it, both ways
    /// (every line is bidirectional).
    #[test]
    fn figure5_neighbours() {
        let t = figure5();
        for (router, expected) in [
            (R1, [R2, R4]),
            (R2, [R1, R3]),
            (R3, [R2, R4]),
            (R4, [R1, R3]),
        ] {
            let n = t.neighbours(ip(router)).unwrap();
            assert_eq!(n.outgoing, ips(&expected), "out of {router}");
            assert_eq!(n.incoming, ips(&expected), "into {router}");
        }
        assert_eq!(
            t.neighbours(ip("10.0.9.9")),
            Err(QueryError::UnknownRouter(ip("10.0.9.9")))
        );
    }

    /// Adjacent routers are one hop apart; opposite corners of the ring are
    /// two hops apart both ways round, and the tie goes to the path through
    /// the lower address (R1→R2→R3 rather than R1→R4→R3).
    #[test]
    fn figure5_shortest_paths() {
        let t = figure5();
        let path = |a: &str, b: &str| routers(&t.shortest_path(ip(a), ip(b)).unwrap());
        assert_eq!(path(R1, R1), ips(&[R1]));
        assert_eq!(path(R1, R2), ips(&[R1, R2]));
        assert_eq!(path(R1, R4), ips(&[R1, R4]));
        assert_eq!(path(R4, R1), ips(&[R4, R1]));
        // Opposite corners: via R2 (10.0.2.1) beats via R4 (10.0.4.1) ...
        assert_eq!(path(R1, R3), ips(&[R1, R2, R3]));
        assert_eq!(path(R3, R1), ips(&[R3, R2, R1]));
        // ... and via R1 (10.0.1.1) beats via R3 (10.0.3.1).
        assert_eq!(path(R2, R4), ips(&[R2, R1, R4]));
        assert_eq!(path(R4, R2), ips(&[R4, R1, R2]));

        let p = t.shortest_path(ip(R1), ip(R3)).unwrap();
        let links: Vec<_> = p.links.iter().map(|l| hop(l)).collect();
        assert_eq!(
            links,
            vec![
                expect_hop(R1, R2, &[(M1, 0)]),
                expect_hop(R2, R3, &[(M2, 0)])
            ]
        );
        assert!(t.shortest_path(ip(R2), ip(R2)).unwrap().links.is_empty());
        assert_eq!(
            t.shortest_path(ip(R1), ip("10.0.9.9")),
            Err(QueryError::UnknownRouter(ip("10.0.9.9")))
        );
    }

    /// The answers do not depend on the order of the rows.
    #[test]
    fn paths_do_not_depend_on_row_order() {
        let t = figure5();
        let mut rows = t.rows().to_vec();
        rows.reverse();
        rows.rotate_left(2);
        let shuffled = Topology::from_rows(&rows).unwrap();
        for a in t.routers() {
            for b in t.routers() {
                assert_eq!(
                    t.shortest_path(a, b).unwrap(),
                    shuffled.shortest_path(a, b).unwrap(),
                    "{a} → {b}"
                );
            }
        }
    }

    /// On a 3×3 grid (many equally short paths), the path found is, for
    /// every pair, the smallest of all shortest simple paths enumerated by
    /// brute force.
    #[test]
    fn shortest_path_is_the_smallest_of_the_shortest() {
        // Routers 10.0.<row>.<col>, lines to the right and downwards, rows
        // given in a scrambled order.
        let addr = |r: u8, c: u8| format!("10.0.{r}.{c}");
        let mut rows = Vec::new();
        for r in 0..3u8 {
            for c in 0..3u8 {
                if c < 2 {
                    rows.push((addr(r, c + 1), addr(r, c)));
                }
                if r < 2 {
                    rows.push((addr(r, c), addr(r + 1, c)));
                }
            }
        }
        rows.sort_by_key(|(a, b)| format!("{b}{a}").chars().rev().collect::<String>());
        let rows: Vec<TopologyRow> = rows
            .into_iter()
            .map(|(from, to)| TopologyRow {
                monitor_address: String::new(),
                link_id: 0,
                from_router: from,
                to_router: to,
            })
            .collect();
        let t = Topology::from_rows(&rows).unwrap();
        assert_eq!(t.links().len(), 24);
        for a in t.routers() {
            for b in t.routers() {
                let (na, nb) = (t.routers[&a], t.routers[&b]);
                let best = petgraph::algo::all_simple_paths::<Vec<_>, _, std::hash::RandomState>(
                    &t.graph, na, nb, 0, None,
                )
                .map(|p: Vec<NodeIndex>| p.into_iter().map(|n| t.graph[n]).collect::<Vec<_>>())
                .min_by(|x, y| x.len().cmp(&y.len()).then_with(|| x.cmp(y)))
                .unwrap_or_else(|| vec![a]);
                assert_eq!(t.shortest_path(a, b).unwrap().routers, best, "{a} → {b}");
            }
        }
    }

    /// A router that cannot be reached has no path.
    #[test]
    fn no_path_between_separate_networks() {
        let t = Topology::parse_csv(&format!(
            "{HEADER}1.1.1.1,0,10.0.0.1,10.0.0.2\n,,10.0.1.1,10.0.1.2\n"
        ))
        .unwrap();
        assert_eq!(
            t.shortest_path(ip("10.0.0.1"), ip("10.0.1.2")),
            Err(QueryError::NoPath {
                from: ip("10.0.0.1"),
                to: ip("10.0.1.2")
            })
        );
        assert!(t.flow_path(ip("10.0.1.2"), ip("10.0.0.2")).is_err());
    }

    /// Each monitor sees exactly the rows that name it, by link id.
    #[test]
    fn figure5_links_of_monitor() {
        let t = figure5();
        let seen = |m: &str| -> Vec<(u32, IpAddr, IpAddr)> {
            t.links_of_monitor(ip(m))
                .into_iter()
                .map(|(id, l)| (id, l.from, l.to))
                .collect()
        };
        assert_eq!(seen(M1), vec![(0, ip(R1), ip(R2)), (1, ip(R2), ip(R1))]);
        assert_eq!(seen(M2), vec![(0, ip(R2), ip(R3)), (1, ip(R3), ip(R2))]);
        assert_eq!(seen(M3), vec![(0, ip(R3), ip(R4)), (1, ip(R1), ip(R4))]);
        // A monitor not in the table, and a router address, see nothing.
        assert!(seen("10.9.0.4").is_empty());
        assert!(seen(R1).is_empty());
    }

    /// Only the reverse directions of L34 and L14 are monitored by nobody.
    #[test]
    fn figure5_unmonitored_links() {
        let t = figure5();
        let links: Vec<_> = t.unmonitored_links().into_iter().map(hop).collect();
        assert_eq!(
            links,
            vec![expect_hop(R4, R1, &[]), expect_hop(R4, R3, &[])]
        );
    }

    /// A flow R4→R2 leaves by the unmonitored R4→R1, then M1 link 0 sees
    /// it on R1→R2; a flow R3→R1 is seen by M2 link 1 then M1 link 1.
    #[test]
    fn figure5_flow_paths() {
        let t = figure5();
        let flow = |a: &str, b: &str| -> Vec<_> {
            t.flow_path(ip(a), ip(b))
                .unwrap()
                .into_iter()
                .map(hop)
                .collect()
        };
        assert_eq!(
            flow(R4, R2),
            vec![expect_hop(R4, R1, &[]), expect_hop(R1, R2, &[(M1, 0)])]
        );
        assert_eq!(
            flow(R3, R1),
            vec![
                expect_hop(R3, R2, &[(M2, 1)]),
                expect_hop(R2, R1, &[(M1, 1)])
            ]
        );
        assert_eq!(flow(R1, R4), vec![expect_hop(R1, R4, &[(M3, 1)])]);
        assert_eq!(flow(R4, R3), vec![expect_hop(R4, R3, &[])]);
        assert!(flow(R2, R2).is_empty());
    }

    /// `link(monitor, id)` finds the direction a tap sees.
    #[test]
    fn figure5_link_lookup() {
        let t = figure5();
        let l = t.link(ip(M2), 1).unwrap();
        assert_eq!(hop(l), expect_hop(R3, R2, &[(M2, 1)]));
        assert_eq!(
            hop(t.link(ip(M3), 0).unwrap()),
            expect_hop(R3, R4, &[(M3, 0)])
        );
        assert!(t.link(ip(M3), 2).is_none());
        assert!(t.link(ip("10.9.0.9"), 0).is_none());
    }

    /// The table shows the six rows as imported, then the two directions
    /// nobody monitors, aligned.
    #[test]
    fn figure5_table() {
        let expected = "\
monitor address  link id  from router  to router
10.9.0.1         0        10.0.1.1     10.0.2.1
10.9.0.1         1        10.0.2.1     10.0.1.1
10.9.0.2         0        10.0.2.1     10.0.3.1
10.9.0.2         1        10.0.3.1     10.0.2.1
10.9.0.3         0        10.0.3.1     10.0.4.1
10.9.0.3         1        10.0.1.1     10.0.4.1
-                -        10.0.4.1     10.0.1.1
-                -        10.0.4.1     10.0.3.1
";
        assert_eq!(figure5().table(), expected);
    }

    /// The DOT output parses (with an independent parser) as a digraph of
    /// the four routers and the eight directed links, each labelled with
    /// its tap or `unmonitored`.
    #[test]
    fn figure5_dot_is_a_digraph() {
        let dot = figure5().dot();
        let ast = dot_parser::ast::Graph::try_from(dot.as_str())
            .unwrap_or_else(|e| panic!("not DOT: {e}\n{dot}"));
        assert!(ast.is_digraph, "{dot}");
        let graph = dot_parser::canonical::Graph::from(ast);
        let unquote = |s: &str| s.trim_matches('"').to_owned();
        let mut nodes: Vec<String> = graph.nodes.set.keys().map(|k| unquote(k)).collect();
        nodes.sort();
        assert_eq!(nodes, [R1, R2, R3, R4]);
        let mut edges: Vec<(String, String, String)> = graph
            .edges
            .set
            .iter()
            .map(|e| {
                let label = e
                    .attr
                    .elems
                    .iter()
                    .find(|(k, _)| *k == "label")
                    .map(|(_, v)| unquote(v))
                    .unwrap_or_default();
                (unquote(&e.from), unquote(&e.to), label)
            })
            .collect();
        edges.sort();
        let expected: Vec<(String, String, String)> = [
            (R1, R2, "10.9.0.1:0"),
            (R1, R4, "10.9.0.3:1"),
            (R2, R1, "10.9.0.1:1"),
            (R2, R3, "10.9.0.2:0"),
            (R3, R2, "10.9.0.2:1"),
            (R3, R4, "10.9.0.3:0"),
            (R4, R1, "unmonitored"),
            (R4, R3, "unmonitored"),
        ]
        .iter()
        .map(|(a, b, l)| ((*a).to_owned(), (*b).to_owned(), (*l).to_owned()))
        .collect();
        assert_eq!(edges, expected);
    }

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

    /// A record round-trips, and a bad stored row is named by its index.
    #[test]
    fn record_round_trip_and_refusal() {
        let t = figure5();
        let record = t.to_record("operator", 1_764_108_000_000);
        assert_eq!(record.imported_by, "operator");
        let back = Topology::from_record(&record).unwrap();
        assert_eq!(back.rows(), t.rows());
        assert_eq!(back.links(), t.links());

        let mut bad = record.clone();
        bad.rows[4].to_router = "10.0.4".into();
        let e = Topology::from_record(&bad).unwrap_err();
        let invalid = e.invalid().unwrap();
        assert_eq!(invalid.at, Some(Location::Row(4)));
        assert_eq!(invalid.problem, Problem::NotAnAddress);
        assert_eq!(
            e.to_string(),
            "rows[4].to_router = \"10.0.4\": not an IP address"
        );

        let mut bad = record;
        bad.rows[1].monitor_address = String::new();
        let e = Topology::from_record(&bad).unwrap_err();
        assert_eq!(e.invalid().unwrap().problem, Problem::LinkIdWithoutMonitor);
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
