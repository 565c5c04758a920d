//! Every NATS subject the system uses, and nothing else.
//!
//! Each function here is the only place its subject string is formatted.
//! [`catalog`] lists them all with who publishes and who subscribes; the
//! test `tests/docs.rs` keeps `docs/bus.md` in step with that list.
//!
//! Tokens (monitor, manager, deployment and app ids) must be valid subject
//! tokens: check them with [`crate::validate_token`] where they enter the
//! system (config files, command-line flags, requests).
//!
//! A monitor command's last token is its requester: the manager id or
//! operator name the command is sent as. The generated permissions let an
//! identity publish commands only with its own id there, so a monitor
//! reads who asked from the subject ([`requester_of`]), not from the body.

use crate::Role;

/// First tokens of every subject: product and protocol version.
pub const PREFIX: &str = "tm.v1";

/// How a subject is used on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// Request/reply: the payload is a request, the reply a `Reply<T>` envelope.
    Command,
    /// Published into a JetStream stream; consumers read it durably.
    Stream,
    /// A wildcard a subscriber uses to receive many subjects at once.
    Wildcard,
}

/// One entry of the subject catalogue.
#[derive(Debug, Clone)]
pub struct SubjectSpec {
    /// Name of the function that formats the subject.
    pub function: &'static str,
    /// The subject with each variable token shown as `{name}`.
    pub pattern: String,
    /// How the subject is used.
    pub kind: SubjectKind,
    /// Type of the payload published on the subject (empty for wildcards).
    pub payload: &'static str,
    /// Type carried in the reply envelope, for commands.
    pub reply: Option<&'static str>,
    /// Roles that publish (or send requests) on the subject.
    pub publishers: &'static [Role],
    /// Roles that subscribe (or answer requests) on the subject.
    pub subscribers: &'static [Role],
}

macro_rules! subjects {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident($($arg:ident),*) = $fmt:literal,
            $kind:ident, $payload:literal, $reply:expr,
            [$($pubr:ident),*] -> [$($subr:ident),*];
    )*) => {
        $(
            $(#[doc = $doc])*
            #[must_use]
            pub fn $name($($arg: &str),*) -> String {
                format!(concat!("tm.v1.", $fmt) $(, $arg = $arg)*)
            }
        )*

        /// Every subject of the protocol, with its use, payload and roles.
        #[must_use]
        pub fn catalog() -> Vec<SubjectSpec> {
            vec![$(
                SubjectSpec {
                    function: stringify!($name),
                    pattern: $name($(concat!("{", stringify!($arg), "}")),*),
                    kind: SubjectKind::$kind,
                    payload: $payload,
                    reply: $reply,
                    publishers: &[$(Role::$pubr),*],
                    subscribers: &[$(Role::$subr),*],
                },
            )*]
        }
    };
}

subjects! {
    /// Load and start an analyzer on a monitor (lifecycle steps S2–S3).
    monitor_load(monitor, requester) = "mon.{monitor}.load.{requester}",
        Command, "LoadRequest", Some("LoadReply"), [Manager, Operator] -> [Monitor];
    /// Stop and unload an analyzer; the reply carries its final results (S6–S7).
    monitor_unload(monitor, requester) = "mon.{monitor}.unload.{requester}",
        Command, "UnloadRequest", Some("UnloadReply"), [Manager, Operator] -> [Monitor];
    /// Current results of a running analyzer, without resetting them (S4–S5).
    monitor_collect(monitor, requester) = "mon.{monitor}.collect.{requester}",
        Command, "CollectRequest", Some("ResultWindow"), [Manager, Operator] -> [Monitor];
    /// New parameters for a running analyzer, applied between two batches.
    monitor_configure(monitor, requester) = "mon.{monitor}.configure.{requester}",
        Command, "ConfigureRequest", Some("ConfigureReply"), [Manager, Operator] -> [Monitor];
    /// Replace a running analyzer's module, keeping its state (between two
    /// batches; the old module keeps running on any refusal).
    monitor_upgrade(monitor, requester) = "mon.{monitor}.upgrade.{requester}",
        Command, "UpgradeRequest", Some("UpgradeReply"), [Manager, Operator] -> [Monitor];
    /// Links with counters and deployments with their figures.
    monitor_status(monitor, requester) = "mon.{monitor}.status.{requester}",
        Command, "StatusRequest", Some("MonitorStatus"), [Manager, Operator] -> [Monitor];
    /// Load a management app into a manager and start it (S1).
    manager_apps_load(manager) = "mgr.{manager}.apps.load",
        Command, "AppLoadRequest", Some("AppStatus"), [Operator] -> [Manager];
    /// Stop and unload a management app (S8).
    manager_apps_unload(manager) = "mgr.{manager}.apps.unload",
        Command, "AppUnloadRequest", Some("AppStatus"), [Operator] -> [Manager];
    /// The management apps a manager runs.
    manager_apps_list(manager) = "mgr.{manager}.apps.list",
        Command, "AppListRequest", Some("AppList"), [Operator] -> [Manager];
    /// Result windows of one deployment on one monitor (stream `TM_RESULTS`).
    results(monitor, deployment) = "results.{monitor}.{deployment}",
        Stream, "ResultWindow", None, [Monitor] -> [Manager, Subscriber, Viewer, Operator];
    /// All result windows of all monitors.
    results_all() = "results.>",
        Wildcard, "", None, [] -> [Manager, Subscriber, Viewer, Operator];
    /// All result windows of one monitor.
    results_of_monitor(monitor) = "results.{monitor}.*",
        Wildcard, "", None, [] -> [Manager, Subscriber, Viewer, Operator];
    /// Events of one deployment on one monitor: alerts the analyzer emits,
    /// loads, unloads, traps and limit hits (stream `TM_EVENTS`).
    events(monitor, deployment) = "events.{monitor}.{deployment}",
        Stream, "Event", None, [Monitor] -> [Manager, Subscriber, Viewer, Operator];
    /// All monitor events.
    events_all() = "events.>",
        Wildcard, "", None, [] -> [Manager, Subscriber, Viewer, Operator];
    /// Reports and events a management app publishes (stream `TM_REPORTS`).
    reports(manager, app) = "reports.{manager}.{app}",
        Stream, "Report", None, [Manager] -> [Subscriber, Viewer, Operator];
    /// All management-app reports.
    reports_all() = "reports.>",
        Wildcard, "", None, [] -> [Subscriber, Viewer, Operator];
}

/// The requester token of a monitor command's subject (its last token).
#[must_use]
pub fn requester_of(subject: &str) -> Option<&str> {
    subject.rsplit('.').next().filter(|t| !t.is_empty())
}

/// The command of a monitor command's subject (`load`, `collect`, …).
#[must_use]
pub fn command_of(subject: &str) -> Option<&str> {
    subject.rsplit('.').nth(1)
}

/// Prefix of the service group under which a monitor's commands are
/// registered with the NATS service API (`tm.v1.mon.{monitor}`).
#[must_use]
pub fn monitor_group(monitor: &str) -> String {
    format!("{PREFIX}.mon.{monitor}")
}

/// Prefix of the service group under which a manager's commands are
/// registered with the NATS service API (`tm.v1.mgr.{manager}`).
#[must_use]
pub fn manager_group(manager: &str) -> String {
    format!("{PREFIX}.mgr.{manager}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_live_under_their_service_group() {
        for spec in catalog() {
            if spec.kind != SubjectKind::Command {
                continue;
            }
            let under_monitor = spec.pattern.starts_with(&monitor_group("{monitor}"));
            let under_manager = spec.pattern.starts_with(&manager_group("{manager}"));
            assert!(
                under_monitor || under_manager,
                "{} is in no service group",
                spec.pattern
            );
            assert!(spec.reply.is_some(), "{} has no reply type", spec.pattern);
        }
    }

    #[test]
    fn patterns_are_unique_and_prefixed() {
        let specs = catalog();
        let mut seen = std::collections::HashSet::new();
        for spec in &specs {
            assert!(spec.pattern.starts_with("tm.v1."), "{}", spec.pattern);
            assert!(
                seen.insert(spec.pattern.clone()),
                "duplicate {}",
                spec.pattern
            );
        }
        assert_eq!(monitor_load("m1", "g1"), "tm.v1.mon.m1.load.g1");
        assert_eq!(requester_of(&monitor_unload("m1", "ops")), Some("ops"));
        assert_eq!(command_of(&monitor_unload("m1", "ops")), Some("unload"));
        assert_eq!(results("m1", "d7"), "tm.v1.results.m1.d7");
    }
}
