//! upgrader: rolls a new module onto a running deployment.
//!
//! On start it asks the manager to upgrade deployment `deployment` to the
//! analyzer blob `blob` (host op `upgrade`, with `params` for the new module
//! if given): the deployment's monitors swap one after another, each keeping
//! the deployment's state, and the first refusal stops the roll. It then
//! publishes one `upgrade` report (which monitors run the new module, which
//! refused and why, which were not asked and run the old one) and logs it.
//! Nothing more happens until it is unloaded; unloading it undoes nothing.
//!
//! A request the manager refuses as a whole (no such deployment, one this
//! manager does not own, no such blob, not an analyzer) changes nothing and
//! refuses the app's load with the manager's reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tm_app_sdk::{Level, Missing, ModuleRef, Swapped, Upgraded};

/// Params.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The deployment to upgrade.
    pub deployment: String,
    /// The new module's blob name in the object store.
    pub blob: String,
    /// Params for the new module; absent: the deployment's current ones.
    pub params: Option<Any>,
}

/// Any MessagePack value that came from JSON (params passed through to the
/// new module untouched).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Any {
    /// `null`
    Nil,
    /// `true` / `false`
    Bool(bool),
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Signed(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Any>),
    /// A map (string keys, as in JSON).
    Map(BTreeMap<String, Any>),
}

/// What a blob name or deployment id may be: 1 to 64 letters, digits, `_`
/// or `-` (what the bus allows in a subject token).
fn check_token(field: &str, value: &str) -> Result<(), String> {
    let why = if value.is_empty() {
        "it is empty"
    } else if value.len() > 64 {
        "it is longer than 64 characters"
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        "only letters, digits, '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(format!("{} = {:?}: {}", field, value, why))
}

impl Params {
    /// Refuses a missing or malformed `deployment` or `blob`, naming it.
    pub fn check(&self) -> Result<(), String> {
        check_token("deployment", &self.deployment)?;
        check_token("blob", &self.blob)
    }
}

/// The `upgrade` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The deployment.
    pub deployment: String,
    /// The module asked for (blob name and SHA-256).
    pub analyzer: ModuleRef,
    /// Every monitor runs the new module, and the deployment's record
    /// names it.
    pub complete: bool,
    /// Monitors that run the new module, in the order they swapped, each
    /// with the module it ran before and how long it held its packets for
    /// the swap (µs).
    pub upgraded: Vec<Swapped>,
    /// The monitor that refused, with the error (the roll stopped there; it
    /// runs the old module on).
    pub refused: Vec<Missing>,
    /// Monitors not asked because of the refusal: they run the old module.
    pub skipped: Vec<String>,
}

/// The report of an upgrade's outcome.
pub fn build_report(u: Upgraded) -> Report {
    Report {
        deployment: u.deployment,
        analyzer: u.analyzer,
        complete: u.failed.is_empty() && u.skipped.is_empty(),
        upgraded: u.done,
        refused: u.failed,
        skipped: u.skipped,
    }
}

/// One line saying what the report says.
pub fn summary(r: &Report) -> String {
    let total = r.upgraded.len() + r.refused.len() + r.skipped.len();
    let mut line = format!(
        "upgrade of {} to {} ({}): {} of {} monitors run it",
        r.deployment,
        r.analyzer.name,
        r.analyzer.sha256,
        r.upgraded.len(),
        total
    );
    for f in &r.refused {
        line += &format!("; {} refused ({}: {})", f.monitor, f.code, f.message);
    }
    if !r.skipped.is_empty() {
        line += &format!("; not asked, on the old module: {}", r.skipped.join(", "));
    }
    if r.complete {
        line += "; the deployment's record names the new module";
    } else {
        line += "; the deployment's record keeps the old module";
    }
    line
}

/// The app: the upgrade happened in `start`.
pub struct Upgrader {
    /// What it published.
    pub report: Report,
}

impl tm_app_sdk::App for Upgrader {
    type Params = Params;

    fn start(params: Params) -> Result<Self, String> {
        params.check()?;
        let outcome = tm_app_sdk::upgrade(&params.deployment, &params.blob, params.params.as_ref())
            .map_err(|e| {
                format!(
                    "upgrade of deployment = {:?} to blob = {:?}: {}",
                    params.deployment, params.blob, e
                )
            })?;
        let report = build_report(outcome);
        let line = summary(&report);
        let level = if report.complete {
            Level::Info
        } else {
            Level::Warn
        };
        tm_app_sdk::log(level, &line);
        tm_app_sdk::publish("upgrade", &report)
            .map_err(|e| format!("{}; its report was not published: {}", line, e))?;
        Ok(Upgrader { report })
    }
}

tm_app_sdk::export_app!(Upgrader);

#[cfg(test)]
mod tests;
