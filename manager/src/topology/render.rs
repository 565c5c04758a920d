//! The topology as text: the figure-5 table and Graphviz.

use std::fmt::Write as _;

use super::{Tap, Topology};

impl Topology {
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
}

#[cfg(test)]
mod tests {
    use crate::topology::fixtures::*;

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
}
