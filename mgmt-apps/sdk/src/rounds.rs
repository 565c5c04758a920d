//! An app's usual life with one analyzer: deploy it (S2), collect it every
//! period (S4) and publish a report each round; after a set number of
//! rounds, or when the manager unloads the app (S8), unload it (S6) and
//! publish a report of its final results (S7).
//!
//! ```ignore
//! struct MyApp { routers: Table<String>, rounds: Rounds }
//!
//! impl App for MyApp {
//!     fn start(p: Params) -> Result<Self, String> {
//!         let rounds = Rounds::start(&deploy_request(&p), schedule(&p))?;
//!         Ok(MyApp { routers: routers_of(&p.prefixes)?, rounds })
//!     }
//!     fn on_timer(&mut self, _: u32, _: u64) -> Result<(), String> {
//!         let routers = &self.routers;
//!         self.rounds
//!             .on_timer(|c: &Collected<MyResults>, round| round.publish(&lay_out(routers, c, round.number)))
//!     }
//!     fn stop(&mut self) -> Result<(), String> {
//!         let routers = &self.routers;
//!         self.rounds
//!             .finish(|c: &Collected<MyResults>, round| round.publish(&lay_out(routers, c, round.number)))
//!     }
//! }
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{CallError, Collected, Deploy, Level};

fn err(e: CallError) -> String {
    e.to_string()
}

/// How [`Rounds`] collects and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The timer that drives the collects.
    pub timer: u32,
    /// Collect period, ms.
    pub every_ms: u64,
    /// Collects before the deployment is unloaded; 0: until the app stops.
    pub rounds: u32,
    /// Per-monitor collect timeout, ms.
    pub collect_timeout_ms: u64,
    /// Also archive every round's results and reports.
    pub archive: bool,
    /// Kind of each round's report.
    pub kind: &'static str,
    /// Kind of the report of the final results.
    pub final_kind: &'static str,
}

/// The report to make of one collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// 1, 2, … for the collects; the final report's is the last collect's + 1.
    pub number: u32,
    /// The report kind: the schedule's `kind`, or `final_kind` for the
    /// final results.
    pub kind: &'static str,
    /// Whether reports are archived too.
    pub archive: bool,
}

impl Round {
    /// Publishes `report` as this round's kind, and archives it if the
    /// schedule says so.
    pub fn publish<B: Serialize>(&self, report: &B) -> Result<(), String> {
        crate::publish(self.kind, report).map_err(err)?;
        if self.archive {
            crate::archive(self.kind, report).map_err(err)?;
        }
        Ok(())
    }
}

/// One deployment, collected and reported in rounds.
#[derive(Debug)]
pub struct Rounds {
    schedule: Schedule,
    deployment: Option<String>,
    round: u32,
}

impl Rounds {
    /// Deploys the analyzer (S2), logs where it went and sets the
    /// schedule's timer.
    pub fn start<P: Serialize>(request: &Deploy<P>, schedule: Schedule) -> Result<Rounds, String> {
        let deployed = crate::deploy(request).map_err(err)?;
        crate::log(
            Level::Info,
            &format!(
                "deployed {} to {} monitors ({} failed)",
                deployed.deployment,
                deployed.placed.len(),
                deployed.failed.len()
            ),
        );
        crate::set_timer(schedule.timer, schedule.every_ms).map_err(err)?;
        Ok(Rounds {
            schedule,
            deployment: Some(deployed.deployment),
            round: 0,
        })
    }

    /// The deployment, until it is unloaded.
    pub fn deployment(&self) -> Option<&str> {
        self.deployment.as_deref()
    }

    /// The number of the last report made (0 before the first).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// A timer fired: collects the deployment (S4) and has `report` make
    /// the round's report; after the schedule's last round, [`finish`]es.
    /// Does nothing once the deployment is unloaded.
    ///
    /// [`finish`]: Rounds::finish
    pub fn on_timer<R, F>(&mut self, mut report: F) -> Result<(), String>
    where
        R: DeserializeOwned,
        F: FnMut(&Collected<R>, Round) -> Result<(), String>,
    {
        let d = match &self.deployment {
            Some(d) => d.clone(),
            None => return Ok(()),
        };
        let collected =
            crate::collect::<R>(&d, self.schedule.collect_timeout_ms, self.schedule.archive)
                .map_err(err)?;
        self.round += 1;
        report(&collected, self.this_round(self.schedule.kind))?;
        if self.schedule.rounds > 0 && self.round >= self.schedule.rounds {
            self.finish(report)?;
        }
        Ok(())
    }

    /// Stops the timer, unloads the deployment (S6) and has `report` make
    /// the report of its final results (S7). Does nothing a second time.
    pub fn finish<R, F>(&mut self, mut report: F) -> Result<(), String>
    where
        R: DeserializeOwned,
        F: FnMut(&Collected<R>, Round) -> Result<(), String>,
    {
        if let Some(d) = self.deployment.take() {
            crate::cancel_timer(self.schedule.timer).map_err(err)?;
            let last = crate::unload::<R>(&d).map_err(err)?;
            self.round += 1;
            report(&last, self.this_round(self.schedule.final_kind))?;
            crate::log(
                Level::Info,
                &format!("unloaded {} after {} rounds", d, self.round - 1),
            );
        }
        Ok(())
    }

    fn this_round(&self, kind: &'static str) -> Round {
        Round {
            number: self.round,
            kind,
            archive: self.schedule.archive,
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::api::{self, Reply};
    use crate::{Deployed, Targets};

    fn ok<T: Serialize>(v: T) -> Vec<u8> {
        crate::encode(&Reply::<T>::Ok(v)).unwrap()
    }

    /// Installs a host that answers every call the rounds make and records
    /// them: the op, and the kind and round of what is published or
    /// archived.
    fn host() -> Rc<RefCell<Vec<String>>> {
        let calls: Rc<RefCell<Vec<String>>> = Rc::default();
        let seen = calls.clone();
        crate::native::set_host(move |op, req| {
            let mut line = op.to_string();
            let reply = match op {
                "deploy" => ok(Deployed {
                    deployment: "d1".into(),
                    sha256: String::new(),
                    placed: vec![],
                    failed: vec![],
                }),
                "set_timer" | "cancel_timer" => ok(api::Empty {}),
                "collect" | "unload" => ok(Collected::<u32> {
                    deployment: "d1".into(),
                    results: vec![],
                    missing: vec![],
                }),
                "publish" => {
                    let p: api::Publish<u32> = crate::decode(req).unwrap();
                    line = format!("publish {} {}", p.kind, p.body);
                    ok(1u64)
                }
                "archive" => {
                    let a: api::Archive<u32> = crate::decode(req).unwrap();
                    line = format!("archive {} {}", a.name, a.body);
                    ok(api::Archived { paths: vec![] })
                }
                other => panic!("unexpected host call {}", other),
            };
            seen.borrow_mut().push(line);
            reply
        });
        calls
    }

    fn start(rounds: u32, archive: bool) -> Rounds {
        let request = Deploy {
            deployment: String::new(),
            analyzer: "a".into(),
            sha256: String::new(),
            params: (),
            filter: Default::default(),
            targets: Targets::All,
            report_every_ms: None,
        };
        Rounds::start(
            &request,
            Schedule {
                timer: 3,
                every_ms: 500,
                rounds,
                collect_timeout_ms: 100,
                archive,
                kind: "k",
                final_kind: "k-final",
            },
        )
        .unwrap()
    }

    fn report(c: &Collected<u32>, round: Round) -> Result<(), String> {
        assert_eq!(c.deployment, "d1");
        round.publish(&round.number)
    }

    #[test]
    fn rounds_collect_report_and_unload_after_the_last() {
        let calls = host();
        let mut r = start(2, false);
        assert_eq!(r.deployment(), Some("d1"));
        for _ in 0..3 {
            r.on_timer(report).unwrap();
        }
        r.finish(report).unwrap();
        assert_eq!(r.deployment(), None);
        assert_eq!(r.round(), 3);
        assert_eq!(
            *calls.borrow(),
            [
                "deploy",
                "set_timer",
                "collect",
                "publish k 1",
                "collect",
                "publish k 2",
                "cancel_timer",
                "unload",
                "publish k-final 3",
            ]
        );
    }

    #[test]
    fn without_a_limit_rounds_run_until_finished_and_archive_when_asked() {
        let calls = host();
        let mut r = start(0, true);
        r.on_timer(report).unwrap();
        r.finish(report).unwrap();
        r.finish(report).unwrap();
        assert_eq!(
            *calls.borrow(),
            [
                "deploy",
                "set_timer",
                "collect",
                "publish k 1",
                "archive k 1",
                "cancel_timer",
                "unload",
                "publish k-final 2",
                "archive k-final 2",
            ]
        );
    }
}
