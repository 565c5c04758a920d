//! What a refused topology says: the file, where in it, the field and
//! value at fault, and what is wrong.

use std::fmt;
use std::path::PathBuf;

use super::Tap;
use super::import::CSV_HEADER;

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
    /// A row of a [`TopologyRecord`](bus_schema::TopologyRecord), from 0.
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
    pub(super) fn new(at: Location, problem: Problem) -> Box<Self> {
        Box::new(Self {
            file: None,
            at: Some(at),
            field: None,
            value: None,
            problem,
        })
    }

    pub(super) fn field(mut self: Box<Self>, field: impl Into<String>) -> Box<Self> {
        self.field = Some(field.into());
        self
    }

    pub(super) fn value(mut self: Box<Self>, value: impl Into<String>) -> Box<Self> {
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
