//! congestion-locator: which link is dropping TCP segments.
//!
//! Deploys `tcp-perf` to every monitor (S2), collects it every `every_ms`
//! (S4) and publishes a `congestion` report each round: every tap's
//! per-link figures laid on the topology's directed links, the hotspots
//! (links whose loss rate passes `retrans_threshold`, worst first), the
//! paths of the flagged connections with the link each path points at, and
//! the `suspect`: the link most likely congested, or null with the reason.
//! After `rounds` collects, or when the manager unloads the app (S8), it
//! unloads tcp-perf (S6) and publishes a `congestion-final` report from the
//! final results (S7).
//!
//! # What a tap can tell
//!
//! tcp-perf follows the sequence space of each direction of each connection
//! at each tap. When a segment is lost and the sender resends it, a tap on
//! the segment's path sees one of two things:
//!
//! * the tap is **upstream of the loss**: it saw the original go through,
//!   then sees the resend: a *retransmission* (sequence space seen before);
//! * the tap is **downstream of the loss**: it never saw the original, saw
//!   the segments after it (a gap), and the resend fills the gap: *out of
//!   order*.
//!
//! So at a tap, `retrans_rate` (retransmissions / data segments) counts
//! losses *after* the tap and `gap_rate` (out of order / data segments)
//! losses *before* it; `loss_rate` is their sum, the share of the tap's
//! data segments that were lost somewhere on their path and resent. A
//! congested link drops segments in the output queue of the router feeding
//! it, before the wire its tap watches: its own tap shows the loss as gaps,
//! the taps upstream of it show it as retransmissions.
//!
//! # Reasoning
//!
//! 1. **Figures.** Each monitor's `links` map (keyed by link id) is laid on
//!    the topology's directed links by (monitor address, link id). A tap
//!    with fewer than `min_data_packets` data segments is not considered. A
//!    considered tap whose `loss_rate` passes `retrans_threshold` is a
//!    hotspot; it *missed the originals* (`lost: before_tap`) if its gap rate
//!    is the larger, else it *saw them* (`lost: after_tap`). Hotspots are
//!    ranked by loss rate, worst first. Where several taps watch one link,
//!    the one with the most data segments speaks for it.
//! 2. **Paths.** Each flagged connection's client and server are mapped to
//!    routers by `prefixes`; both directions (`flow_path` client→server and
//!    server→client) are affected paths, since either may carry the lost
//!    data. Along a path the loss lies after every tap that saw the
//!    originals and before every tap that missed them. So when a link and
//!    the link downstream of it on the path both show loss, the upstream
//!    one is not blamed for segments it saw go through: the path points at
//!    the **earliest link whose tap missed the originals** (`evidence:
//!    missed_originals`); unmonitored links between it and the previous
//!    considered tap cannot be told apart from it and are listed as
//!    `also_possible`. When no tap on the path missed them but some saw the
//!    resends, the loss lies after the last of those: the path points at the
//!    next link (`after_last_tap`), or at that last link itself when it ends
//!    the path (`after_tap`: lost in its far router or beyond).
//! 3. **Suspect.** The link the paths of the most flagged connections point
//!    at (then the most paths, then the higher loss rate).
//! 4. **Without paths** (no `prefixes`, no flagged connection, or no hotspot
//!    on their paths) the per-link figures alone decide: the upstream-most
//!    hotspot that missed the originals (no such hotspot on a link into its
//!    from-router), worst first; failing that, the downstream-most hotspot
//!    that saw them, the loss being after its tap. Unmonitored links next to
//!    it on the loss side are `also_possible`.
//! 5. No hotspot: `suspect` is null and `reason` says why.
//!
//! Caveats: reordering also fills gaps (it reads as loss before the tap); a
//! lost last segment of a flight is resent after a timeout without leaving
//! a gap, so only the taps upstream of the loss count it; lost ACKs make the
//! sender resend segments every tap saw, which reads as loss after the last
//! tap. Figures are cumulative since the deployment (tcp-perf's totals).

mod params;
mod reasoning;
mod report;
mod tcp_perf;

pub use params::Params;
pub use reasoning::{build_report, Settings};
pub use report::{
    AffectedPath, Evidence, LinkFigure, LinkRef, Method, PathLink, Report, Side, Suspect, Verdict,
};
pub use tcp_perf::{TcpFlow, TcpLink, TcpResults};
pub use tm_app_sdk::lpm::{routers_of, PrefixRow, Table};

use reasoning::arrow;
use tcp_perf::TcpPerfParams;
use tm_app_sdk::rounds::{Round, Rounds, Schedule};
use tm_app_sdk::{Collected, Deploy, Filter, Level, Targets};

/// The app.
pub struct CongestionLocator {
    params: Params,
    routers: Table<String>,
    rounds: Rounds,
}

const COLLECT_TIMER: u32 = 1;

fn err(e: tm_app_sdk::CallError) -> String {
    e.to_string()
}

/// Locates the congestion from a round's results, publishes the report and
/// logs the suspect.
fn report(
    params: &Params,
    routers: &Table<String>,
    collected: &Collected<TcpResults>,
    round: Round,
) -> Result<(), String> {
    let topology = tm_app_sdk::topology().map_err(err)?;
    let mut flow_path = |from: &str, to: &str| match tm_app_sdk::flow_path(from, to) {
        Ok(p) => Some(p),
        Err(e) => {
            tm_app_sdk::log(Level::Warn, &format!("flow_path {} → {}: {}", from, to, e));
            None
        }
    };
    let report = build_report(
        &topology,
        collected,
        routers,
        &params.settings(),
        round.number,
        &mut flow_path,
    );
    round.publish(&report)?;
    if let Some(s) = &report.suspect {
        tm_app_sdk::log(
            Level::Info,
            &format!(
                "round {}: suspect {}: {}",
                round.number,
                arrow(&s.from_router, &s.to_router),
                report.reason
            ),
        );
    }
    Ok(())
}

impl tm_app_sdk::App for CongestionLocator {
    type Params = Params;

    fn start(params: Params) -> Result<Self, String> {
        let routers = params.check()?;
        let rounds = Rounds::start(
            &Deploy {
                deployment: String::new(),
                analyzer: params.analyzer.clone(),
                sha256: params.sha256.clone(),
                params: TcpPerfParams {
                    retrans_threshold: params.retrans_threshold,
                },
                filter: Filter {
                    protocols: vec![6],
                    ..Filter::default()
                },
                targets: Targets::All,
                report_every_ms: None,
            },
            Schedule {
                timer: COLLECT_TIMER,
                every_ms: params.every_ms,
                rounds: params.rounds,
                collect_timeout_ms: params.collect_timeout_ms,
                archive: params.archive,
                kind: "congestion",
                final_kind: "congestion-final",
            },
        )?;
        Ok(CongestionLocator {
            params,
            routers,
            rounds,
        })
    }

    fn on_timer(&mut self, _timer: u32, _now_ns: u64) -> Result<(), String> {
        let (params, routers) = (&self.params, &self.routers);
        self.rounds
            .on_timer(|collected, round| report(params, routers, collected, round))
    }

    fn stop(&mut self) -> Result<(), String> {
        let (params, routers) = (&self.params, &self.routers);
        self.rounds
            .finish(|collected, round| report(params, routers, collected, round))
    }
}

tm_app_sdk::export_app!(CongestionLocator);

#[cfg(test)]
mod tests;
