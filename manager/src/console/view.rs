//! What the console knows, as the browser gets it: the whole view as JSON
//! when a page connects, then one [`Update`] per change on the bus.
//!
//! Keys: monitors, deployments and managers by id; result windows by
//! `{monitor}/{deployment}` (the latest of each running deployment: a
//! final window removes its key); reports by
//! `{manager}/{app}/{kind}` (the latest of each); the last [`EVENTS_KEPT`]
//! events.

use std::collections::{BTreeMap, VecDeque};

use bus_schema::{
    DeploymentRecord, Event, ManagerRecord, MonitorRecord, Report, ResultWindow, TopologyRecord,
    Value,
};
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::topology::Topology;

/// Events the view keeps for a page that connects.
pub const EVENTS_KEPT: usize = 200;

/// Entries of an array inside results that a page gets (the top flows of a
/// `top_n = 10000` flow-stats would be megabytes each window).
pub const ARRAY_KEPT: usize = 25;

/// One change, as pushed to every page.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Update {
    /// The topology was imported (again).
    Topology { value: Json },
    /// A monitor's liveness record changed (`None`: removed).
    Monitor { key: String, value: Option<Json> },
    /// A deployment record changed (`None`: removed).
    Deployment { key: String, value: Option<Json> },
    /// A manager's record changed (`None`: removed).
    Manager { key: String, value: Option<Json> },
    /// A result window was published.
    Window { key: String, value: Json },
    /// A management app published a report.
    Report { key: String, value: Json },
    /// An event was published.
    Event { value: Json },
}

/// The whole view.
#[derive(Debug, Default)]
pub struct View {
    topology: Json,
    monitors: BTreeMap<String, Json>,
    deployments: BTreeMap<String, Json>,
    managers: BTreeMap<String, Json>,
    windows: BTreeMap<String, Json>,
    reports: BTreeMap<String, Json>,
    events: VecDeque<Json>,
}

impl View {
    /// Applies `update`; returns it for the pages.
    pub fn apply(&mut self, update: Update) -> Update {
        let set = |map: &mut BTreeMap<String, Json>, key: &str, value: &Option<Json>| match value {
            Some(v) => {
                map.insert(key.to_owned(), v.clone());
            }
            None => {
                map.remove(key);
            }
        };
        match &update {
            Update::Topology { value } => self.topology = value.clone(),
            Update::Monitor { key, value } => set(&mut self.monitors, key, value),
            Update::Deployment { key, value } => set(&mut self.deployments, key, value),
            Update::Manager { key, value } => set(&mut self.managers, key, value),
            // A deployment's final window (its unload) ends its row.
            Update::Window { key, value } if value["last"] == true => {
                self.windows.remove(key);
            }
            Update::Window { key, value } => {
                self.windows.insert(key.clone(), value.clone());
            }
            Update::Report { key, value } => {
                self.reports.insert(key.clone(), value.clone());
            }
            Update::Event { value } => {
                if self.events.len() == EVENTS_KEPT {
                    self.events.pop_front();
                }
                self.events.push_back(value.clone());
            }
        }
        update
    }

    /// The whole view, as a page's first message.
    #[must_use]
    pub fn to_json(&self) -> Json {
        json!({
            "topology": self.topology,
            "monitors": self.monitors,
            "deployments": self.deployments,
            "managers": self.managers,
            "windows": self.windows,
            "reports": self.reports,
            "events": self.events,
        })
    }
}

/// A bus value as JSON (as the archive writes it).
#[must_use]
pub fn json_of(v: &Value) -> Json {
    crate::archive::to_json(v)
}

/// Arrays inside results cut to [`ARRAY_KEPT`] entries (the first ones:
/// analyzers list theirs largest first).
fn trimmed(v: Json) -> Json {
    match v {
        Json::Array(items) => {
            Json::Array(items.into_iter().take(ARRAY_KEPT).map(trimmed).collect())
        }
        Json::Object(map) => Json::Object(map.into_iter().map(|(k, v)| (k, trimmed(v))).collect()),
        other => other,
    }
}

/// The topology for the map: routers, and every direction of every line
/// with the taps that see it (none: untapped).
#[must_use]
pub fn topology_json(record: &TopologyRecord) -> Json {
    let Ok(topology) = Topology::from_record(record) else {
        return Json::Null;
    };
    let links: Vec<Json> = topology
        .links()
        .iter()
        .map(|l| {
            json!({
                "from": l.from.to_string(),
                "to": l.to.to_string(),
                "taps": l.seen_by.iter().map(|t| json!({
                    "monitor_address": t.monitor.to_string(),
                    "link_id": t.link_id,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "routers": topology.routers().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "links": links,
        "imported_unix_ms": record.imported_unix_ms,
        "imported_by": record.imported_by,
    })
}

/// A monitor's record for the page.
#[must_use]
pub fn monitor_json(r: &MonitorRecord) -> Json {
    serde_json::to_value(r).unwrap_or(Json::Null)
}

/// A manager's record for the page.
#[must_use]
pub fn manager_json(r: &ManagerRecord) -> Json {
    serde_json::to_value(r).unwrap_or(Json::Null)
}

/// A deployment record for the page, with its KV revision (it goes up
/// with every change: a configure, an upgrade).
#[must_use]
pub fn deployment_json(r: &DeploymentRecord, revision: u64) -> Json {
    let mut v = serde_json::to_value(r).unwrap_or(Json::Null);
    if let Json::Object(map) = &mut v {
        map.insert("revision".into(), revision.into());
        map.insert("params".into(), json_of(&r.params));
    }
    v
}

/// A result window for the page, its results' arrays trimmed.
#[must_use]
pub fn window_json(w: &ResultWindow) -> Json {
    json!({
        "monitor": w.monitor,
        "deployment": w.deployment,
        "analyzer": w.analyzer,
        "sha256": w.sha256,
        "run": w.run,
        "seq": w.seq,
        "end_unix_ms": w.end_unix_ms,
        "last": w.last,
        "stats": w.stats,
        "capture": w.capture,
        "results": trimmed(json_of(&w.results)),
    })
}

/// A report for the page.
#[must_use]
pub fn report_json(r: &Report) -> Json {
    json!({
        "manager": r.manager,
        "app": r.app,
        "seq": r.seq,
        "at_unix_ms": r.at_unix_ms,
        "kind": r.kind,
        "body": trimmed_report(json_of(&r.body)),
    })
}

/// link-load's `links` must stay whole (one per tapped direction); other
/// arrays are cut like results'.
fn trimmed_report(v: Json) -> Json {
    match v {
        Json::Object(map) => Json::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k == "links" || k == "unmonitored" || k == "path" {
                        v
                    } else {
                        trimmed(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        other => trimmed(other),
    }
}

/// An event for the page.
#[must_use]
pub fn event_json(e: &Event) -> Json {
    let mut v = serde_json::to_value(e).unwrap_or(Json::Null);
    if let Json::Object(map) = &mut v {
        map.insert("data".into(), trimmed(json_of(&e.data)));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_in_results_are_cut_and_events_kept_to_the_last_ones() {
        let long = Json::Array((0..100).map(Json::from).collect());
        let cut = trimmed(json!({"top": long, "n": 3}));
        assert_eq!(cut["top"].as_array().unwrap().len(), ARRAY_KEPT);
        assert_eq!(cut["n"], 3);
        let mut view = View::default();
        for i in 0..EVENTS_KEPT + 5 {
            view.apply(Update::Event { value: json!(i) });
        }
        let events = view.to_json()["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), EVENTS_KEPT);
        assert_eq!(events[0], 5);
        view.apply(Update::Monitor {
            key: "m".into(),
            value: Some(json!({"a": 1})),
        });
        view.apply(Update::Monitor {
            key: "m".into(),
            value: None,
        });
        assert_eq!(view.to_json()["monitors"], json!({}));
        view.apply(Update::Window {
            key: "m/d".into(),
            value: json!({"seq": 1, "last": false}),
        });
        assert_eq!(view.to_json()["windows"]["m/d"]["seq"], 1);
        view.apply(Update::Window {
            key: "m/d".into(),
            value: json!({"seq": 2, "last": true}),
        });
        assert_eq!(view.to_json()["windows"], json!({}));
    }
}
