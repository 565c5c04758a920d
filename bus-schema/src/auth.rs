//! Who may publish and subscribe where: the NATS permissions of each role,
//! derived from the [`subject`] catalogue and the [`store`] settings, and
//! the `nats-server` authorization block that grants them.
//!
//! Every identity is an nkey user (its public key in the server's config,
//! its seed in a file only it reads). Rights are scoped to the identity's
//! own id where the subject has one: monitor `m1` answers only
//! `tm.v1.mon.m1.*` and publishes only `tm.v1.results.m1.*`; manager `g1`
//! answers only `tm.v1.mgr.g1.*` and reports only on `tm.v1.reports.g1.*`.
//! Replies travel on a private inbox, `_INBOX.<public key>.>`
//! ([`inbox_prefix`]), which no other identity may subscribe to; identities
//! that answer requests may publish to the reply subject of a request they
//! received (`allow_responses`), and nowhere else outside their lists.
//!
//! Monitor commands carry their requester as the last subject token
//! (`tm.v1.mon.<monitor>.<command>.<requester>`): a manager or operator may
//! publish them only with its own id there, which proves to the monitor who
//! asked.
//!
//! JetStream is granted per stream: a role that reads a stream or bucket may
//! look it up, make consumers on it, fetch, acknowledge and get messages; a
//! role that writes a bucket may put into it (`$KV.<bucket>.<key>`, scoped
//! to its own id for `tm_monitors`, `tm_managers` and `tm_snapshots`). Only
//! the admin identity creates streams and buckets (`tmctl setup`); every
//! other process checks their settings at start. Nobody may update, delete
//! or purge a stream, except that writers of `tm_blobs` purge an object's
//! old chunks when it is replaced.

use crate::store::{self, BucketKind};
use crate::subject::{self, SubjectKind};
use crate::{Role, validate_token};

/// One identity on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// What it is.
    pub role: Role,
    /// Its id: the monitor or manager id; any name for operators and
    /// subscribers.
    pub id: String,
    /// Its nkey public key (`U…`, 56 characters).
    pub public_key: String,
}

/// The subjects an identity may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Publish allow list (subjects and wildcards).
    pub publish: Vec<String>,
    /// Subscribe allow list.
    pub subscribe: Vec<String>,
    /// May publish one reply to the reply subject of a request it received.
    pub allow_responses: bool,
}

/// The inbox prefix of the identity with this public key: the client sets
/// it (`ConnectOptions::custom_inbox_prefix`) and only it may subscribe there.
#[must_use]
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX.{public_key}")
}

/// The nkey user seed in a seed file's text (`tmctl auth init` writes
/// them): its first line that is neither blank nor a `#` comment, if that
/// line starts with `SU`.
#[must_use]
pub fn seed_in(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| l.starts_with("SU"))
}

/// Name of the NATS service the role registers (`$SRV.*.<name>`), if any.
#[must_use]
pub fn service_name(role: Role) -> Option<&'static str> {
    match role {
        Role::Monitor => Some("tm-monitor"),
        Role::Manager => Some("tm-manager"),
        Role::Operator | Role::Subscriber | Role::Viewer | Role::Admin => None,
    }
}

/// The JetStream stream behind a stream or bucket of the contract.
#[must_use]
pub fn stream_of_bucket(bucket: &str, kind: BucketKind) -> String {
    match kind {
        BucketKind::KeyValue => format!("KV_{bucket}"),
        BucketKind::Object => format!("OBJ_{bucket}"),
    }
}

/// Checks an identity's id and role-specific constraints.
///
/// # Errors
/// The id is not a valid subject token.
pub fn validate(identity: &Identity) -> Result<(), crate::TokenError> {
    validate_token(identity.role.as_str(), &identity.id)?;
    if !(identity.public_key.len() == 56 && identity.public_key.starts_with('U')) {
        return Err(crate::TokenError {
            field: format!("{} {} public key", identity.role.as_str(), identity.id),
            value: identity.public_key.clone(),
            why: "not an nkey user public key (56 characters starting with U)",
        });
    }
    Ok(())
}

/// A subject pattern with the role's own id put in for its own variable
/// (`{monitor}` for monitors, `{manager}` for managers, `{requester}` for
/// the managers and operators that send commands) and `*` for every other
/// variable.
fn instantiate(pattern: &str, role: Role, id: &str) -> String {
    pattern
        .split('.')
        .map(|token| match token {
            "{monitor}" if role == Role::Monitor => id,
            "{manager}" if role == Role::Manager => id,
            "{requester}" if matches!(role, Role::Manager | Role::Operator) => id,
            t if t.starts_with('{') => "*",
            t => t,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A JetStream stream of the contract with the roles that read and write it.
struct StreamRoles {
    name: String,
    readers: Vec<Role>,
    writers: Vec<Role>,
    /// The bucket behind it, for a `KV_`/`OBJ_` stream.
    bucket: Option<store::BucketSpec>,
}

/// Every stream of the contract and its roles: a stream's readers subscribe
/// to the subjects it captures, its writers publish them; a bucket's are
/// declared with it.
fn streams_with_roles() -> Vec<StreamRoles> {
    let catalog = subject::catalog();
    let mut out = Vec::new();
    for spec in store::streams() {
        let captured: Vec<_> = catalog
            .iter()
            .filter(|s| {
                spec.subjects
                    .iter()
                    .any(|f| s.pattern.starts_with(f.trim_end_matches('>')))
            })
            .collect();
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for s in captured {
            for r in s.subscribers {
                if !readers.contains(r) {
                    readers.push(*r);
                }
            }
            for r in s.publishers {
                if !writers.contains(r) {
                    writers.push(*r);
                }
            }
        }
        out.push(StreamRoles {
            name: spec.name.to_owned(),
            readers,
            writers,
            bucket: None,
        });
    }
    for spec in store::buckets() {
        out.push(StreamRoles {
            name: stream_of_bucket(spec.name, spec.kind),
            readers: spec.readers.to_vec(),
            writers: spec.writers.to_vec(),
            bucket: Some(spec),
        });
    }
    out
}

/// Whether `role` reads or writes the JetStream stream `stream` (a stream
/// of the contract, or the `KV_`/`OBJ_` stream of one of its buckets), and
/// so may look it up (and, without enforced identities, create it). The
/// admin touches them all.
#[must_use]
pub fn touches(role: Role, stream: &str) -> bool {
    streams_with_roles().iter().any(|s| {
        s.name == stream
            && (role == Role::Admin || s.readers.contains(&role) || s.writers.contains(&role))
    })
}

/// The subjects a writer of a bucket may put to, scoped to its own id where
/// the bucket is keyed by it.
fn bucket_writes(bucket: &str, kind: BucketKind, role: Role, id: &str) -> String {
    match kind {
        BucketKind::Object => format!("$O.{bucket}.>"),
        BucketKind::KeyValue => match (bucket, role) {
            (store::MONITORS_BUCKET, Role::Monitor) | (store::MANAGERS_BUCKET, Role::Manager) => {
                format!("$KV.{bucket}.{id}")
            }
            (store::SNAPSHOTS_BUCKET, Role::Monitor) => {
                format!("$KV.{bucket}.{}>", store::snapshot_prefix(id))
            }
            _ => format!("$KV.{bucket}.>"),
        },
    }
}

/// The permissions of `role` with id `id` and nkey `public_key`.
#[must_use]
pub fn permissions(role: Role, id: &str, public_key: &str) -> Permissions {
    fn publish(s: String, p: &mut Permissions) {
        if !p.publish.contains(&s) {
            p.publish.push(s);
        }
    }
    fn subscribe(s: String, p: &mut Permissions) {
        if !p.subscribe.contains(&s) {
            p.subscribe.push(s);
        }
    }
    let mut p = Permissions::default();
    // The protocol's own subjects.
    for spec in subject::catalog() {
        if spec.publishers.contains(&role) && spec.kind != SubjectKind::Wildcard {
            publish(instantiate(&spec.pattern, role, id), &mut p);
        }
        if spec.subscribers.contains(&role) {
            subscribe(instantiate(&spec.pattern, role, id), &mut p);
            if spec.kind == SubjectKind::Command {
                p.allow_responses = true;
            }
        }
    }
    // The private inbox for replies, JetStream acks and push consumers.
    subscribe(format!("{}.>", inbox_prefix(public_key)), &mut p);
    // The NATS service API of monitors and managers (discovery: `nats micro`).
    if let Some(name) = service_name(role) {
        for s in [
            "$SRV.*".to_owned(),
            format!("$SRV.*.{name}"),
            format!("$SRV.*.{name}.*"),
        ] {
            subscribe(s, &mut p);
        }
    }
    if matches!(role, Role::Operator | Role::Manager) {
        publish("$SRV.>".into(), &mut p);
    }
    // JetStream.
    publish("$JS.API.INFO".into(), &mut p);
    for StreamRoles {
        name: stream,
        readers,
        writers,
        bucket,
    } in streams_with_roles()
    {
        if role == Role::Admin {
            publish(format!("$JS.API.STREAM.INFO.{stream}"), &mut p);
            publish(format!("$JS.API.STREAM.CREATE.{stream}"), &mut p);
            continue;
        }
        let reads = readers.contains(&role);
        let writes = writers.contains(&role);
        if !(reads || writes) {
            continue;
        }
        publish(format!("$JS.API.STREAM.INFO.{stream}"), &mut p);
        if reads {
            for api in [
                format!("$JS.API.CONSUMER.CREATE.{stream}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
                format!("$JS.API.CONSUMER.INFO.{stream}.>"),
                format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
                format!("$JS.API.STREAM.MSG.GET.{stream}"),
                format!("$JS.API.DIRECT.GET.{stream}"),
                format!("$JS.API.DIRECT.GET.{stream}.>"),
                format!("$JS.ACK.{stream}.>"),
                format!("$JS.FC.{stream}.>"),
            ] {
                publish(api, &mut p);
            }
        }
        if writes && let Some(bucket) = &bucket {
            publish(bucket_writes(bucket.name, bucket.kind, role, id), &mut p);
            if bucket.kind == BucketKind::Object {
                publish(format!("$JS.API.STREAM.PURGE.{stream}"), &mut p);
            }
        }
    }
    p
}

fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The `authorization { users = [...] }` block granting each identity its
/// role's permissions; a `nats-server` config includes it
/// (`include "auth.conf"`).
///
/// # Errors
/// The first identity with a bad id or public key, or an id given twice
/// for one role.
pub fn server_config(identities: &[Identity]) -> Result<String, crate::TokenError> {
    let mut out = String::from(
        "# NATS permissions of the tm roles, written by `tmctl auth init`.\n\
         # Re-run it to add identities; edits here are overwritten.\n\
         authorization {\n  users = [\n",
    );
    let mut seen = std::collections::HashSet::new();
    for identity in identities {
        validate(identity)?;
        if !seen.insert((identity.role, identity.id.clone())) {
            return Err(crate::TokenError {
                field: identity.role.as_str().to_owned(),
                value: identity.id.clone(),
                why: "given twice",
            });
        }
        let p = permissions(identity.role, &identity.id, &identity.public_key);
        out += &format!(
            "    # {} {}\n    {{\n      nkey: {:?}\n      permissions: {{\n        publish: {{ allow: {} }}\n        subscribe: {{ allow: {} }}\n",
            identity.role.as_str(),
            identity.id,
            identity.public_key,
            quoted_list(&p.publish),
            quoted_list(&p.subscribe),
        );
        if p.allow_responses {
            out += "        allow_responses: true\n";
        }
        out += "      }\n    }\n";
    }
    out += "  ]\n}\n";
    Ok(out)
}

/// Parses a role name as written in permission files and on `tmctl`'s
/// command line.
#[must_use]
pub fn role_from_str(name: &str) -> Option<Role> {
    [
        Role::Monitor,
        Role::Manager,
        Role::Operator,
        Role::Subscriber,
        Role::Viewer,
        Role::Admin,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
}

/// The identity a seed file written by `tmctl auth init` belongs to, from
/// its name (`<role>-<id>.nk`).
#[must_use]
pub fn identity_of_seed_file(path: &std::path::Path) -> Option<(Role, String)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".nk")?;
    let (role, id) = stem.split_once('-')?;
    Some((role_from_str(role)?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn monitors_are_scoped_to_their_own_id() {
        let p = permissions(Role::Monitor, "m1", PK);
        assert!(p.subscribe.contains(&"tm.v1.mon.m1.load.*".to_owned()));
        assert!(!p.subscribe.iter().any(|s| s.contains("mon.*")));
        assert!(p.publish.contains(&"tm.v1.results.m1.*".to_owned()));
        assert!(p.publish.contains(&"$KV.tm_monitors.m1".to_owned()));
        assert!(p.publish.contains(&"$KV.tm_snapshots.m1.>".to_owned()));
        assert!(!p.publish.iter().any(|s| s.starts_with("tm.v1.mon.")));
        assert!(
            !p.publish
                .iter()
                .any(|s| s.starts_with("$KV.tm_deployments"))
        );
        assert!(p.allow_responses);
        assert!(p.subscribe.contains(&format!("_INBOX.{PK}.>")));
    }

    #[test]
    fn subscribers_only_read_streams() {
        let p = permissions(Role::Subscriber, "s1", PK);
        assert!(!p.allow_responses);
        assert!(p.publish.iter().all(|s| s.starts_with("$JS.")), "{p:?}");
        assert!(
            p.publish
                .iter()
                .any(|s| s == "$JS.API.CONSUMER.CREATE.TM_RESULTS.>")
        );
        assert!(!p.publish.iter().any(|s| s.contains("KV_tm_deployments")));
    }

    #[test]
    fn viewers_read_streams_and_state_and_change_nothing() {
        let p = permissions(Role::Viewer, "v1", PK);
        assert!(!p.allow_responses);
        assert!(p.publish.iter().all(|s| s.starts_with("$JS.")), "{p:?}");
        for stream in [
            "TM_RESULTS",
            "TM_EVENTS",
            "TM_REPORTS",
            "KV_tm_topology",
            "KV_tm_monitors",
            "KV_tm_deployments",
            "KV_tm_managers",
        ] {
            assert!(
                p.publish
                    .contains(&format!("$JS.API.CONSUMER.CREATE.{stream}.>")),
                "{stream}: {p:?}"
            );
        }
        for forbidden in ["$KV.", "$O.", "tm.v1.", "KV_tm_snapshots", "OBJ_tm_blobs"] {
            assert!(
                !p.publish.iter().any(|s| s.contains(forbidden)),
                "{forbidden}: {p:?}"
            );
        }
    }

    #[test]
    fn only_the_admin_creates_streams() {
        for role in [
            Role::Monitor,
            Role::Manager,
            Role::Operator,
            Role::Subscriber,
            Role::Viewer,
        ] {
            let p = permissions(role, "x", PK);
            assert!(
                !p.publish
                    .iter()
                    .any(|s| s.starts_with("$JS.API.STREAM.CREATE")),
                "{role:?}: {p:?}"
            );
        }
        let admin = permissions(Role::Admin, "admin", PK);
        assert!(
            admin
                .publish
                .contains(&"$JS.API.STREAM.CREATE.TM_RESULTS".to_owned())
        );
        assert!(
            admin
                .publish
                .contains(&"$JS.API.STREAM.CREATE.OBJ_tm_blobs".to_owned())
        );
        assert!(!admin.publish.iter().any(|s| s.starts_with("tm.v1.")));
        assert!(!admin.allow_responses);
    }

    #[test]
    fn commanders_send_only_as_themselves() {
        let g = permissions(Role::Manager, "g1", PK);
        assert!(g.publish.contains(&"tm.v1.mon.*.load.g1".to_owned()));
        assert!(
            !g.publish
                .iter()
                .any(|s| s.ends_with(".*") && s.starts_with("tm.v1.mon."))
        );
        let o = permissions(Role::Operator, "ops", PK);
        assert!(o.publish.contains(&"tm.v1.mon.*.unload.ops".to_owned()));
        let m = permissions(Role::Monitor, "m1", PK);
        assert!(m.subscribe.contains(&"tm.v1.mon.m1.load.*".to_owned()));
    }

    #[test]
    fn nobody_may_delete_or_update_streams() {
        for role in [
            Role::Monitor,
            Role::Manager,
            Role::Operator,
            Role::Subscriber,
            Role::Viewer,
            Role::Admin,
        ] {
            let p = permissions(role, "x", PK);
            for s in &p.publish {
                assert!(
                    !s.starts_with("$JS.API.STREAM.DELETE")
                        && !s.starts_with("$JS.API.STREAM.UPDATE")
                        && s != "$JS.>"
                        && s != ">",
                    "{role:?}: {s}"
                );
            }
        }
    }

    #[test]
    fn seed_files_skip_comments() {
        assert_eq!(seed_in("# tm monitor m1\n\n  SUABC  \n"), Some("SUABC"));
        assert_eq!(seed_in("# only a comment\n"), None);
        assert_eq!(seed_in("-----BEGIN NATS USER JWT-----\n"), None);
    }

    #[test]
    fn config_lists_every_identity_and_refuses_bad_ones() {
        let ids = vec![
            Identity {
                role: Role::Monitor,
                id: "m1".into(),
                public_key: PK.into(),
            },
            Identity {
                role: Role::Manager,
                id: "g1".into(),
                public_key: PK.replace('A', "B").replacen('B', "U", 1),
            },
        ];
        let text = server_config(&ids).unwrap();
        assert!(text.contains("# monitor m1") && text.contains("# manager g1"));
        assert_eq!(text.matches("nkey:").count(), 2);
        let mut twice = ids.clone();
        twice.push(ids[0].clone());
        assert_eq!(server_config(&twice).unwrap_err().why, "given twice");
        let bad = Identity {
            role: Role::Monitor,
            id: "a.b".into(),
            public_key: PK.into(),
        };
        assert!(server_config(&[bad]).is_err());
    }
}
