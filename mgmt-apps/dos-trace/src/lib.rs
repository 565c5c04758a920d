//! dos-trace: follows denial-of-service alerts back through the topology.
//!
//! Deploys `dos-detect` to every monitor (S2) and subscribes to its events,
//! so every alert (SYN flood, UDP flood, port scan) reaches the app the
//! moment a monitor raises it. Alerts are grouped into incidents by
//! (target, kind); whenever a tap (monitor address + the alert's link)
//! joins an incident, the app traces the attack and publishes an
//! `attack-path` report: the taps that alerted, ordered along the path, the
//! path from the attack's ingress to the victim, the ingress link, and the
//! unmonitored links where the trail goes dark. Every `every_ms` it collects
//! dos-detect (S4), folds the alerts of the results into the incidents (so
//! alerts raised before the subscription, or lost, still count) and
//! publishes a `dos-summary`. When the manager unloads the app (S8) it
//! unloads dos-detect (S6) and publishes a `dos-summary-final` from the
//! final results (S7).
//!
//! # Roles
//!
//! For a flood the attacked host is the alert's `target` and the attackers
//! are its `sources`. For a port scan dos-detect reports the scanner as
//! `target` and the scanned addresses as `sources`: the roles swap, the
//! traffic runs from the target to the sources. The victim's router is the
//! router of the attacked address (for a scan, the router most scanned
//! addresses sit behind); the source routers are those of the attackers.
//! Addresses are mapped to routers by longest match in `prefixes`.
//!
//! # Tracing
//!
//! The alerting taps are laid on the topology's directed links. The ingress
//! is the alerting link farthest upstream, towards the sources:
//!
//! 1. **Source path.** If the victim's router is known and some source
//!    router is not the victim's, the attack follows `flow_path(source
//!    router, victim router)`. Of the source routers, the one whose path
//!    holds the most alerting links is taken; the ingress is the first
//!    alerting link on it, `path` runs from there to the victim, and the
//!    path's unmonitored links are reported `upstream` (before the ingress:
//!    where the trail goes dark) or `downstream` of it.
//! 2. **Upstream walk.** Otherwise (sources unmapped, spoofed — their path
//!    holds no alerting tap — or behind the victim's router), the walk
//!    starts at the alerting link nearest the victim (one no other alerting
//!    link continues; entering the victim's router if any does) and goes
//!    against the traffic through the topology's incoming links, never
//!    straight back over the reverse direction: an alerting link is
//!    followed, an unmonitored one is crossed (the trail may resume beyond
//!    it), a monitored link that did not alert is not taken (its tap would
//!    have seen the attack). The last alerting link reached is the ingress;
//!    the unmonitored links into its from-router are where the trail goes
//!    dark (`upstream`), and if the victim's router is known the path is
//!    completed to it with `flow_path`.
//!
//! dos-detect counts per monitor, not per link: a monitor tapping two links
//! of one path alerts once per window, on whichever link crossed the
//! threshold. Incidents are kept in memory (at most 1000, the least
//! recently active dropped first).

mod detect;
mod incidents;
mod params;
mod summary;
mod trace;

use std::collections::BTreeSet;

pub use detect::{ByKind, DetectParams, DetectResults, DosAlert};
pub use incidents::{Incident, Incidents, Sighting, MAX_INCIDENTS, MAX_SOURCES};
pub use params::Params;
pub use summary::{build_summary, IncidentSummary, MonitorSummary, Summary};
pub use tm_app_sdk::lpm::{routers_of, PrefixRow, Table};
pub use trace::{trace, AlertingTap, AttackPath, Ingress, Method, PathHop, Position, Unmonitored};

use tm_app_sdk::{Collected, Deploy, EventView, Filter, Level, Targets};
use trace::Key;

/// The app.
pub struct DosTrace {
    params: Params,
    routers: Table<String>,
    deployment: Option<String>,
    incidents: Incidents,
    round: u32,
}

const SUMMARY_TIMER: u32 = 1;

fn err(e: tm_app_sdk::CallError) -> String {
    e.to_string()
}

impl DosTrace {
    /// Publishes the trace of each incident in `keys`.
    fn publish_traces(&mut self, keys: &BTreeSet<Key>) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        let topology = tm_app_sdk::topology().map_err(err)?;
        let mut flow_path = |from: &str, to: &str| match tm_app_sdk::flow_path(from, to) {
            Ok(p) => Some(p),
            Err(e) => {
                tm_app_sdk::log(Level::Warn, &format!("flow_path {} → {}: {}", from, to, e));
                None
            }
        };
        for k in keys {
            let report = match self.incidents.map.get(k) {
                Some(inc) => trace(&topology, inc, &self.routers, &mut flow_path),
                None => continue,
            };
            if let Some(inc) = self.incidents.map.get_mut(k) {
                inc.ingress = report.ingress.clone();
            }
            tm_app_sdk::publish("attack-path", &report).map_err(err)?;
            if self.params.archive {
                tm_app_sdk::archive("attack-path", &report).map_err(err)?;
            }
            tm_app_sdk::log(
                Level::Info,
                &format!(
                    "{} on {}: {} tap(s), ingress {}",
                    report.kind,
                    report.target,
                    report.alerting_taps.len(),
                    report.ingress.as_ref().map_or_else(
                        || "unknown".to_string(),
                        |i| format!("{}→{}", i.from_router, i.to_router)
                    )
                ),
            );
        }
        Ok(())
    }

    /// Folds collected alerts into the incidents; traces those with a new tap.
    fn absorb(&mut self, collected: &Collected<DetectResults>) -> Result<(), String> {
        let mut changed = BTreeSet::new();
        for m in &collected.results {
            for a in &m.results.alerts {
                if self.incidents.record(&m.address, a) {
                    changed.insert((a.target.clone(), a.kind.clone()));
                }
            }
        }
        self.publish_traces(&changed)
    }

    fn summary(&self, collected: &Collected<DetectResults>, kind: &str) -> Result<(), String> {
        let s = build_summary(collected, &self.incidents, self.round);
        tm_app_sdk::publish(kind, &s).map_err(err)?;
        if self.params.archive {
            tm_app_sdk::archive(kind, &s).map_err(err)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        if let Some(d) = self.deployment.take() {
            if self.params.every_ms > 0 {
                tm_app_sdk::cancel_timer(SUMMARY_TIMER).map_err(err)?;
            }
            let last = tm_app_sdk::unload::<DetectResults>(&d).map_err(err)?;
            self.absorb(&last)?;
            self.round += 1;
            self.summary(&last, "dos-summary-final")?;
            tm_app_sdk::log(
                Level::Info,
                &format!("unloaded {}: {} incident(s)", d, self.incidents.map.len()),
            );
        }
        Ok(())
    }
}

impl tm_app_sdk::App for DosTrace {
    type Params = Params;

    fn start(params: Params) -> Result<Self, String> {
        let (detect, routers) = params.check()?;
        let deployed = tm_app_sdk::deploy(&Deploy {
            deployment: String::new(),
            analyzer: params.analyzer.clone(),
            sha256: params.sha256.clone(),
            params: detect,
            filter: Filter {
                protocols: vec![6, 17],
                ..Filter::default()
            },
            targets: Targets::All,
            report_every_ms: None,
        })
        .map_err(err)?;
        let d = deployed.deployment.clone();
        let armed = tm_app_sdk::subscribe(&d).and_then(|_| {
            if params.every_ms > 0 {
                tm_app_sdk::set_timer(SUMMARY_TIMER, params.every_ms)
            } else {
                Ok(())
            }
        });
        if let Err(e) = armed {
            // Do not leave dos-detect running for an app that did not start.
            let _ = tm_app_sdk::unload::<serde::de::IgnoredAny>(&d);
            return Err(err(e));
        }
        tm_app_sdk::log(
            Level::Info,
            &format!(
                "deployed {} to {} monitors ({} failed), subscribed to its alerts",
                d,
                deployed.placed.len(),
                deployed.failed.len()
            ),
        );
        Ok(DosTrace {
            params,
            routers,
            deployment: Some(d),
            incidents: Incidents::default(),
            round: 0,
        })
    }

    fn on_event(&mut self, event: &[u8]) -> Result<(), String> {
        let head: EventView<serde::de::IgnoredAny> = tm_app_sdk::decode(event)?;
        if self.deployment.as_deref() != Some(head.deployment.as_str()) {
            return Ok(());
        }
        if head.kind != "alert" {
            tm_app_sdk::log(
                Level::Info,
                &format!(
                    "{} ({}): {}: {}",
                    head.monitor, head.address, head.kind, head.message
                ),
            );
            return Ok(());
        }
        let ev: EventView<DosAlert> = tm_app_sdk::decode(event)?;
        if self.incidents.record(&ev.address, &ev.data) {
            let mut keys = BTreeSet::new();
            keys.insert((ev.data.target.clone(), ev.data.kind.clone()));
            self.publish_traces(&keys)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, _timer: u32, _now_ns: u64) -> Result<(), String> {
        let d = match &self.deployment {
            Some(d) => d.clone(),
            None => return Ok(()),
        };
        let collected = tm_app_sdk::collect::<DetectResults>(
            &d,
            self.params.collect_timeout_ms,
            self.params.archive,
        )
        .map_err(err)?;
        self.absorb(&collected)?;
        self.round += 1;
        self.summary(&collected, "dos-summary")
    }

    fn stop(&mut self) -> Result<(), String> {
        self.finish()
    }
}

tm_app_sdk::export_app!(DosTrace);

#[cfg(test)]
mod tests;
