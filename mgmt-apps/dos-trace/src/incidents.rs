//! Incidents: alerts grouped by (target, kind), each alerting tap's
//! sightings, bounded in incidents, sources and remembered windows.

use std::collections::{BTreeMap, BTreeSet};

use crate::detect::DosAlert;
use crate::trace::Ingress;

/// Incidents kept at once.
pub const MAX_INCIDENTS: usize = 1000;
/// Sources kept per incident.
pub const MAX_SOURCES: usize = 64;
/// Windows remembered per tap (to count each alert once).
const MAX_WINDOWS: usize = 64;

/// One tap's alerts for an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Its first alert's packet time.
    pub first_ts_ns: u64,
    /// Its latest alert's packet time.
    pub last_ts_ns: u64,
    /// The largest count its alerts carried (packets or probes in a window).
    pub count: u64,
    /// Alerts (windows) it raised.
    pub alerts: u64,
    windows: BTreeSet<u64>,
}

/// The alerts for one (target, kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The alerts' target.
    pub target: String,
    /// The alerts' kind.
    pub kind: String,
    /// By (monitor address, link id).
    pub taps: BTreeMap<(String, u32), Sighting>,
    /// Sources seen in its alerts (at most [`MAX_SOURCES`]).
    pub sources: BTreeSet<String>,
    /// First alert's packet time.
    pub first_ts_ns: u64,
    /// Latest alert's packet time.
    pub last_ts_ns: u64,
    /// The ingress of its latest trace.
    pub ingress: Option<Ingress>,
}

/// Every incident, by (target, kind).
#[derive(Debug, Clone, Default)]
pub struct Incidents {
    /// The incidents.
    pub map: BTreeMap<(String, String), Incident>,
}

impl Incidents {
    /// Adds an alert a monitor at `address` raised; true if its tap is new
    /// to the incident (the picture changed). Each (tap, window) counts once,
    /// so an alert delivered as an event and listed in the results again
    /// is not counted twice.
    pub fn record(&mut self, address: &str, a: &DosAlert) -> bool {
        let key = (a.target.clone(), a.kind.clone());
        if !self.map.contains_key(&key) && self.map.len() >= MAX_INCIDENTS {
            let stale = self
                .map
                .iter()
                .min_by_key(|(_, i)| i.last_ts_ns)
                .map(|(k, _)| k.clone());
            if let Some(k) = stale {
                self.map.remove(&k);
            }
        }
        let inc = self.map.entry(key).or_insert_with(|| Incident {
            target: a.target.clone(),
            kind: a.kind.clone(),
            taps: BTreeMap::new(),
            sources: BTreeSet::new(),
            first_ts_ns: a.ts_ns,
            last_ts_ns: a.ts_ns,
            ingress: None,
        });
        inc.first_ts_ns = inc.first_ts_ns.min(a.ts_ns);
        inc.last_ts_ns = inc.last_ts_ns.max(a.ts_ns);
        for s in &a.sources {
            if inc.sources.len() >= MAX_SOURCES {
                break;
            }
            inc.sources.insert(s.clone());
        }
        let tap = (address.to_string(), a.link);
        let new_tap = !inc.taps.contains_key(&tap);
        let s = inc.taps.entry(tap).or_insert(Sighting {
            first_ts_ns: a.ts_ns,
            last_ts_ns: a.ts_ns,
            count: 0,
            alerts: 0,
            windows: BTreeSet::new(),
        });
        if s.windows.insert(a.window_start_ns) {
            s.alerts += 1;
            if s.windows.len() > MAX_WINDOWS {
                let oldest = s.windows.iter().next().copied();
                if let Some(o) = oldest {
                    s.windows.remove(&o);
                }
            }
        }
        s.first_ts_ns = s.first_ts_ns.min(a.ts_ns);
        s.last_ts_ns = s.last_ts_ns.max(a.ts_ns);
        s.count = s.count.max(a.count);
        new_tap
    }
}
