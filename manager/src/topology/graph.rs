//! The topology as a petgraph directed graph of routers, and the
//! queries management apps and `tmctl` ask of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;

use bus_schema::TopologyRow;
use petgraph::Direction;
use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};

use super::error::{Invalid, Location, Problem};
use super::import::TO_ROUTER;

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

/// A validated row with where it came from.
pub(super) struct Entry {
    pub(super) at: Location,
    pub(super) tap: Option<Tap>,
    pub(super) from: IpAddr,
    pub(super) to: IpAddr,
}

/// The topology, validated and held as a directed graph.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The rows as imported, addresses in canonical form.
    pub(super) rows: Vec<TopologyRow>,
    /// Routers (added in address order) and directed links (added in
    /// (from, to) order), at most one edge per direction.
    pub(super) graph: DiGraph<IpAddr, Link>,
    pub(super) routers: BTreeMap<IpAddr, NodeIndex>,
    pub(super) taps: BTreeMap<Tap, EdgeIndex>,
}

impl Topology {
    /// The graph of validated entries: refuses none at all, a self-loop or
    /// a tap described twice; adds the undescribed reverse of each line.
    pub(super) fn build(entries: Vec<Entry>) -> Result<Self, Box<Invalid>> {
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

    fn node(&self, router: IpAddr) -> Result<NodeIndex, QueryError> {
        self.routers
            .get(&router)
            .copied()
            .ok_or(QueryError::UnknownRouter(router))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::fixtures::*;

    fn routers(path: &Path<'_>) -> Vec<IpAddr> {
        path.routers.clone()
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
}
