//! Per-role NATS identities end to end: `tmctl auth init` makes nkey seeds
//! for monitors, managers, an operator and a subscriber and the
//! `authorization` block a real nats-server enforces.
//!
//! * The permission matrix: every identity publishes to and subscribes on
//!   every subject of the contract (each command, stream and wildcard for
//!   every monitor and manager id), the KV and object-store subjects, the
//!   JetStream API of every stream, the inboxes and the service API. What
//!   the contract gives its role (the catalogue's publishers and
//!   subscribers, the buckets' writers, own ids only) works: no violation,
//!   and the message reaches every identity subscribed to it; everything
//!   else is refused by the server with a permissions violation naming the
//!   subject, and reaches nobody.
//! * The whole system under those identities: monitors, a manager, tmctl
//!   and a subscriber each with its own seed deploy, collect, report and
//!   read the streams without a single violation, and a monitor refuses a
//!   deployment owned by someone not in its `[trust] owners`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Event, ServerError};
use bus_schema::Role;
use bus_schema::auth::stream_of_bucket;
use bus_schema::store::{self, BucketKind};
use bus_schema::subject::{self, SubjectKind};
use common::{ManagerProc, Reports, System, auth_init};
use futures::StreamExt;
use harness::NatsServer;

const MONITORS: [&str; 2] = ["10-9-0-1", "10-9-0-2"];
/// Who monitor commands may be sent as: the managers, the operator, and
/// an id no identity has.
const REQUESTERS: [&str; 4] = ["g1", "g2", "ops", "nobody"];
const MANAGERS: [&str; 2] = ["g1", "g2"];

/// One identity's connection and the permission violations the server
/// reported to it (the quoted subject of each).
struct Actor {
    role: Role,
    id: String,
    public_key: String,
    client: async_nats::Client,
    violations: Arc<Mutex<Vec<(Op, String)>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Pub,
    Sub,
}

/// The violation a server error reports: `Permissions Violation for
/// Publish to "x"` / `… for Subscription to "x"`.
fn violation(message: &str) -> Option<(Op, String)> {
    let lower = message.to_lowercase();
    let op = if lower.contains("violation for publish") {
        Op::Pub
    } else if lower.contains("violation for subscription") {
        Op::Sub
    } else {
        return None;
    };
    let start = message.find('"')? + 1;
    let end = start + message[start..].find('"')?;
    Some((op, message[start..end].to_owned()))
}

async fn connect(url: &str, seed: &Path, role: Role, id: &str, public_key: &str) -> Actor {
    let violations: Arc<Mutex<Vec<(Op, String)>>> = Arc::default();
    let seen = violations.clone();
    let options = async_nats::ConnectOptions::new().event_callback(move |event| {
        let seen = seen.clone();
        async move {
            if let Event::ServerError(ServerError::Other(message)) = event
                && let Some(v) = violation(&message)
            {
                seen.lock().unwrap().push(v);
            }
        }
    });
    let client = bus_schema::nats::with_credentials(options, seed)
        .await
        .unwrap()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{} {id} cannot connect: {e}", role.as_str()));
    Actor {
        role,
        id: id.to_owned(),
        public_key: public_key.to_owned(),
        client,
        violations,
    }
}

/// A subject of the matrix and who the contract lets use it.
#[derive(Debug, Clone)]
struct Target {
    subject: String,
    /// Which rule decides (for the failure listing).
    what: &'static str,
    publish: fn(&Actor, &Target) -> bool,
    subscribe: fn(&Actor, &Target) -> bool,
    /// Roles of the catalogue entry (commands, streams, wildcards).
    publishers: &'static [Role],
    subscribers: &'static [Role],
    monitor: Option<&'static str>,
    manager: Option<&'static str>,
    /// The requester token of a monitor command.
    requester: Option<&'static str>,
    /// Bucket and key of a KV subject.
    bucket: Option<store::BucketSpec>,
    key: String,
    /// The stream of a JetStream API subject.
    stream: String,
}

impl Target {
    fn new(subject: String, what: &'static str) -> Target {
        Target {
            subject,
            what,
            publish: |_, _| false,
            subscribe: |_, _| false,
            publishers: &[],
            subscribers: &[],
            monitor: None,
            manager: None,
            requester: None,
            bucket: None,
            key: String::new(),
            stream: String::new(),
        }
    }
}

/// Own ids only: a monitor for its own monitor token, a manager for its own
/// manager token, a manager or operator for its own requester token.
fn own(actor: &Actor, t: &Target) -> bool {
    !(actor.role == Role::Monitor && t.monitor.is_some_and(|m| m != actor.id)
        || actor.role == Role::Manager && t.manager.is_some_and(|g| g != actor.id)
        || matches!(actor.role, Role::Manager | Role::Operator)
            && t.requester.is_some_and(|r| r != actor.id))
}

/// Roles that read and write a stream of the contract (its subjects'
/// subscribers and publishers) or a bucket (its readers and writers).
fn stream_roles(stream: &str) -> (Vec<Role>, Vec<Role>) {
    for spec in store::streams() {
        if spec.name == stream {
            let prefix = spec.subjects[0].trim_end_matches('>');
            let mut readers = Vec::new();
            let mut writers = Vec::new();
            for s in subject::catalog()
                .into_iter()
                .filter(|s| s.pattern.starts_with(prefix))
            {
                readers.extend_from_slice(s.subscribers);
                writers.extend_from_slice(s.publishers);
            }
            return (readers, writers);
        }
    }
    for spec in store::buckets() {
        if stream_of_bucket(spec.name, spec.kind) == stream {
            return (spec.readers.to_vec(), spec.writers.to_vec());
        }
    }
    panic!("{stream} is not a stream of the contract")
}

fn all_streams() -> Vec<String> {
    let mut names: Vec<String> = store::streams().iter().map(|s| s.name.to_owned()).collect();
    for b in store::buckets() {
        names.push(stream_of_bucket(b.name, b.kind));
    }
    names
}

/// Every subject the matrix tries, with the contract's rule for each.
fn targets(actors: &[Actor]) -> Vec<Target> {
    let mut out = Vec::new();
    // The catalogue, for every monitor and manager id.
    for spec in subject::catalog() {
        let monitors: Vec<Option<&'static str>> = if spec.pattern.contains("{monitor}") {
            MONITORS.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        let managers: Vec<Option<&'static str>> = if spec.pattern.contains("{manager}") {
            MANAGERS.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        let requesters: Vec<Option<&'static str>> = if spec.pattern.contains("{requester}") {
            REQUESTERS.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        for m in &monitors {
            for g in &managers {
                for r in &requesters {
                    let subject = spec
                        .pattern
                        .replace("{monitor}", m.unwrap_or(""))
                        .replace("{manager}", g.unwrap_or(""))
                        .replace("{requester}", r.unwrap_or(""))
                        .replace("{deployment}", "d1")
                        .replace("{app}", "a1");
                    let mut t = Target::new(subject, spec.function);
                    t.publishers = spec.publishers;
                    t.subscribers = spec.subscribers;
                    t.monitor = *m;
                    t.manager = *g;
                    t.requester = *r;
                    t.publish = |a, t| {
                        !t.subject.contains('*')
                            && !t.subject.contains('>')
                            && t.publishers.contains(&a.role)
                            && own(a, t)
                    };
                    t.subscribe = |a, t| t.subscribers.contains(&a.role) && own(a, t);
                    // Wildcard entries are only ever subscribed to.
                    if spec.kind == SubjectKind::Wildcard {
                        t.publish = |_, _| false;
                    }
                    out.push(t);
                }
            }
        }
    }
    // Outside the contract: nobody.
    out.push(Target::new("tm.v1.other.thing".into(), "unknown subject"));
    out.push(Target::new(">".into(), "everything"));
    // Inboxes: only one's own, and only to subscribe.
    out.push(Target::new("_INBOX.>".into(), "all inboxes"));
    for a in actors {
        let mut t = Target::new(format!("_INBOX.{}.>", a.public_key), "an inbox");
        t.key = a.public_key.clone();
        t.subscribe = |a, t| a.public_key == t.key;
        out.push(t);
        let mut unasked = Target::new(format!("_INBOX.{}.unasked", a.public_key), "an inbox");
        unasked.key = a.public_key.clone();
        unasked.subscribe = |a, t| a.public_key == t.key;
        out.push(unasked);
    }
    // The service API: monitors and managers answer it, operators and
    // managers ask.
    let mut srv = Target::new("$SRV.PING".into(), "service discovery");
    srv.publish = |a, _| matches!(a.role, Role::Operator | Role::Manager);
    srv.subscribe = |a, _| matches!(a.role, Role::Monitor | Role::Manager);
    out.push(srv);
    // KV puts: the bucket's writers, monitors and managers only under their
    // own keys where the bucket is keyed by them. Nobody reads `$KV.` with
    // a plain subscription.
    for bucket in store::buckets() {
        if bucket.kind == BucketKind::Object {
            for s in ["M.bmFtZQ", "C.chunk"] {
                let mut t = Target::new(format!("$O.{}.{s}", bucket.name), "object store");
                t.bucket = Some(bucket.clone());
                t.publish = |a, t| t.bucket.as_ref().unwrap().writers.contains(&a.role);
                out.push(t);
            }
            continue;
        }
        let keys: Vec<String> = match bucket.name {
            store::MONITORS_BUCKET => MONITORS.iter().map(|m| (*m).to_owned()).collect(),
            store::MANAGERS_BUCKET => MANAGERS.iter().map(|g| (*g).to_owned()).collect(),
            store::SNAPSHOTS_BUCKET => MONITORS.iter().map(|m| format!("{m}.d1")).collect(),
            _ => vec!["k1".into()],
        };
        for key in keys {
            let mut t = Target::new(format!("$KV.{}.{key}", bucket.name), "KV put");
            t.bucket = Some(bucket.clone());
            t.key = key;
            t.publish = |a, t| {
                let b = t.bucket.as_ref().unwrap();
                b.writers.contains(&a.role)
                    && match (b.name, a.role) {
                        (store::MONITORS_BUCKET, Role::Monitor)
                        | (store::MANAGERS_BUCKET, Role::Manager) => t.key == a.id,
                        (store::SNAPSHOTS_BUCKET, Role::Monitor) => {
                            t.key.starts_with(&format!("{}.", a.id))
                        }
                        _ => true,
                    }
            };
            out.push(t);
        }
        let mut all = Target::new(format!("$KV.{}.>", bucket.name), "KV subscription");
        all.bucket = Some(bucket.clone());
        out.push(all);
    }
    // The JetStream API: looking up and making consumers on the streams a
    // role reads or writes; deleting, updating or purging no stream.
    for stream in all_streams() {
        let mut info = Target::new(format!("$JS.API.STREAM.INFO.{stream}"), "stream lookup");
        info.stream = stream.clone();
        info.publish = |a, t| {
            let (r, w) = stream_roles(&t.stream);
            a.role == Role::Admin || r.contains(&a.role) || w.contains(&a.role)
        };
        out.push(info);
        // Only the admin creates streams and buckets: anyone else could
        // make one capture the commands (or republish them) first.
        let mut create = Target::new(format!("$JS.API.STREAM.CREATE.{stream}"), "stream creation");
        create.publish = |a, _| a.role == Role::Admin;
        out.push(create);
        let mut consumer = Target::new(
            format!("$JS.API.CONSUMER.CREATE.{stream}.c1.x"),
            "consumer create",
        );
        consumer.stream = stream.clone();
        consumer.publish = |a, t| stream_roles(&t.stream).0.contains(&a.role);
        out.push(consumer);
        for verb in ["DELETE", "UPDATE"] {
            out.push(Target::new(
                format!("$JS.API.STREAM.{verb}.{stream}"),
                "stream removal",
            ));
        }
        if !stream.starts_with("OBJ_") {
            out.push(Target::new(
                format!("$JS.API.STREAM.PURGE.{stream}"),
                "stream purge",
            ));
        }
    }
    out
}

/// Returns once the server has processed everything `client` sent before
/// (a JetStream account query: a round trip every role may make; `flush`
/// only empties the client's socket buffer).
async fn barrier(client: &async_nats::Client) {
    async_nats::jetstream::new(client.clone())
        .query_account()
        .await
        .unwrap();
}

/// NATS subject matching (`*` one token, `>` the rest).
fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[tokio::test]
async fn each_role_may_use_its_subjects_and_nothing_else() {
    let ids = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for m in MONITORS {
        args.extend(["--monitor", m]);
    }
    for g in MANAGERS {
        args.extend(["--manager", g]);
    }
    args.extend(["--operator", "ops", "--subscriber", "s1"]);
    let identities = auth_init(ids.path(), &args);
    // Those named, and the admin that is always made.
    assert_eq!(identities.len(), 7);
    assert!(
        identities
            .iter()
            .any(|(r, id, _)| *r == Role::Admin && id == "admin")
    );
    // Running it again keeps every seed and adds the new identity.
    let again = auth_init(ids.path(), &["--subscriber", "s2"]);
    assert_eq!(again.len(), 8);
    for i in &identities {
        assert!(again.contains(i), "{i:?} changed");
    }
    let seed =
        |role: Role, id: &str| -> PathBuf { ids.path().join(format!("{}-{id}.nk", role.as_str())) };
    let nats =
        NatsServer::start_with_auth(&ids.path().join("auth.conf"), &seed(Role::Operator, "ops"))
            .await
            .unwrap();
    // Every stream and bucket exists: the admin made them.
    nats.setup_as(&seed(Role::Admin, "admin")).await;

    let mut actors = Vec::new();
    for (role, id, pk) in &identities {
        actors.push(connect(&nats.url(), &seed(*role, id), *role, id, pk).await);
    }
    let targets = targets(&actors);

    // Subscribe: each actor to every target. One operation per round trip
    // (`barrier`): every subscription is in place before anyone publishes,
    // and refusals do not come in bursts (the client hands server errors to
    // its event callback through a bounded queue that drops what overflows).
    let mut subscriptions = Vec::new();
    for (ai, a) in actors.iter().enumerate() {
        for t in &targets {
            let sub = a.client.subscribe(t.subject.clone()).await.unwrap();
            subscriptions.push((ai, t.subject.clone(), sub));
            barrier(&a.client).await;
        }
    }
    // Publish: each actor to every literal target, a payload naming both.
    for (ai, a) in actors.iter().enumerate() {
        for t in targets.iter().filter(|t| !t.subject.contains(['*', '>'])) {
            a.client
                .publish(t.subject.clone(), format!("{ai}|{}", t.subject).into())
                .await
                .unwrap();
            barrier(&a.client).await;
        }
    }
    // What each subscription receives: everything the contract lets
    // through (waited for, however loaded the machine), then a moment more
    // for anything it should not.
    let mut expected: BTreeSet<(usize, String, String)> = BTreeSet::new();
    for (ai, a) in actors.iter().enumerate() {
        for t in targets.iter().filter(|t| (t.publish)(a, t)) {
            for (bi, b) in actors.iter().enumerate() {
                for p in targets.iter().filter(|p| matches(&p.subject, &t.subject)) {
                    if (p.subscribe)(b, p) {
                        expected.insert((bi, p.subject.clone(), format!("{ai}|{}", t.subject)));
                    }
                }
            }
        }
    }
    let mut received: BTreeSet<(usize, String, String)> = BTreeSet::new();
    let mut drain = async |received: &mut BTreeSet<_>| {
        for (ai, pattern, sub) in &mut subscriptions {
            while let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(1), sub.next()).await
            {
                received.insert((
                    *ai,
                    pattern.clone(),
                    String::from_utf8_lossy(&msg.payload).into_owned(),
                ));
            }
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !expected.is_subset(&received) && tokio::time::Instant::now() < deadline {
        drain(&mut received).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for a in &actors {
        barrier(&a.client).await;
    }
    drain(&mut received).await;
    // The server's refusals arrive as asynchronous errors: wait for every
    // one the contract predicts (the check below lists any missing).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline
        && actors.iter().any(|a| {
            let seen = a.violations.lock().unwrap().clone();
            targets.iter().any(|t| {
                (!(t.subscribe)(a, t) && !seen.contains(&(Op::Sub, t.subject.clone())))
                    || (!t.subject.contains(['*', '>'])
                        && !(t.publish)(a, t)
                        && !seen.contains(&(Op::Pub, t.subject.clone())))
            })
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for a in &actors {
        assert_eq!(
            a.client
                .statistics()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{} {} reconnected during the matrix",
            a.role.as_str(),
            a.id
        );
    }

    let violated = |a: &Actor, op: Op, subject: &str| {
        a.violations
            .lock()
            .unwrap()
            .iter()
            .any(|(o, s)| *o == op && s == subject)
    };
    let mut wrong = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    for (ai, a) in actors.iter().enumerate() {
        for t in &targets {
            for (op, allowed) in [(Op::Sub, (t.subscribe)(a, t)), (Op::Pub, (t.publish)(a, t))] {
                if op == Op::Pub && t.subject.contains(['*', '>']) {
                    continue;
                }
                *counts.entry((a.role.as_str(), op, allowed)).or_insert(0) += 1;
                if violated(a, op, &t.subject) == allowed {
                    wrong.push(format!(
                        "{} {} {op:?} {} ({}): expected {}, the server {}",
                        a.role.as_str(),
                        a.id,
                        t.subject,
                        t.what,
                        if allowed { "allowed" } else { "denied" },
                        if allowed { "denied it" } else { "allowed it" },
                    ));
                }
                // Delivery: a publication reaches exactly the subscriptions
                // the contract allows that match it.
                if op == Op::Pub {
                    let payload = format!("{ai}|{}", t.subject);
                    for (bi, b) in actors.iter().enumerate() {
                        for p in &targets {
                            if !matches(&p.subject, &t.subject) {
                                continue;
                            }
                            let expect = allowed && (p.subscribe)(b, p);
                            let got = received.contains(&(bi, p.subject.clone(), payload.clone()));
                            if expect != got {
                                wrong.push(format!(
                                    "{} {}'s message on {} {} {} {}'s subscription {}",
                                    a.role.as_str(),
                                    a.id,
                                    t.subject,
                                    if got { "reached" } else { "missed" },
                                    b.role.as_str(),
                                    b.id,
                                    p.subject
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The matrix is not degenerate: every role has allowed and denied
    // subscriptions and publications.
    for role in ["monitor", "manager", "operator", "subscriber", "admin"] {
        for op in [Op::Pub, Op::Sub] {
            for allowed in [true, false] {
                let n = counts.get(&(role, op, allowed)).copied().unwrap_or(0);
                assert!(
                    n > 0,
                    "{role} {op:?} allowed={allowed}: no cell ({counts:?})"
                );
            }
        }
    }
    eprintln!("permission matrix: {counts:?}");

    // Request/reply, on fresh connections: monitor m1 answers a manager's
    // request on its private inbox (allow_responses); the matrix showed it
    // may not publish there unasked.
    let find = |id: &str| identities.iter().find(|i| i.1 == id).unwrap();
    let (role, id, pk) = find("10-9-0-1");
    let monitor = connect(&nats.url(), &seed(*role, id), *role, id, pk).await;
    let (role, id, pk) = find("g1");
    let manager = connect(&nats.url(), &seed(*role, id), *role, id, pk).await;
    let mut requests = monitor
        .client
        .subscribe(subject::monitor_status("10-9-0-1", "*"))
        .await
        .unwrap();
    barrier(&monitor.client).await;
    let ask = manager
        .client
        .request(subject::monitor_status("10-9-0-1", "g1"), "status?".into());
    let answer = async {
        let msg = requests.next().await.unwrap();
        let reply = msg.reply.unwrap();
        assert!(
            reply.starts_with(&format!("_INBOX.{}.", manager.public_key)),
            "{reply}"
        );
        monitor.client.publish(reply, "ok".into()).await.unwrap();
    };
    let (reply, ()) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(ask, answer) })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no request/reply in 20 s: monitor {:?}, manager {:?}\n{}",
                    monitor.client.connection_state(),
                    manager.client.connection_state(),
                    nats.log()
                )
            });
    let v = monitor.violations.lock().unwrap().clone();
    assert_eq!(
        &reply
            .unwrap_or_else(|e| panic!(
                "{e}: monitor's last violations {:?}",
                &v[v.len().saturating_sub(3)..]
            ))
            .payload[..],
        b"ok"
    );

    // JetStream through the permissions: a monitor's own liveness record
    // is stored (acknowledged), another monitor's is refused; the
    // subscriber reads TM_RESULTS through a consumer.
    let mjs = async_nats::jetstream::new(monitor.client.clone());
    let ack = mjs
        .publish(
            format!("$KV.{}.10-9-0-1", store::MONITORS_BUCKET),
            "up".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        ack.stream,
        stream_of_bucket(store::MONITORS_BUCKET, BucketKind::KeyValue)
    );
    let sub = actors.iter().find(|a| a.id == "s1").unwrap();
    let sjs = async_nats::jetstream::new(sub.client.clone());
    let results = sjs.get_stream(store::RESULTS_STREAM).await.unwrap();
    assert!(
        results
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("s1".into()),
                ..Default::default()
            })
            .await
            .is_ok()
    );
    assert!(
        sjs.get_key_value(store::DEPLOYMENTS_BUCKET).await.is_err(),
        "a subscriber looked up tm_deployments"
    );
    // The server logged the refusals too.
    assert!(
        nats.log().contains("Permissions Violation")
            || nats.log().to_lowercase().contains("violation"),
        "no violation in the server log"
    );
}

/// `tmctl` with the given seed file.
fn tmctl(system: &System, creds: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["--nats", &system.nats.url()])
        .arg("--nats-creds")
        .arg(creds)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_system_runs_under_role_identities() {
    let topology = common::figure5();
    let traffic = common::traffic(&topology, &[(1, 3, 3, 40, 300), (3, 4, 2, 30, 200)]);
    let ids = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    let monitor_ids: Vec<String> = topology
        .monitors()
        .into_iter()
        .map(|a| common::monitor_id(&a.to_string()))
        .collect();
    for m in &monitor_ids {
        args.extend(["--monitor", m.as_str()]);
    }
    args.extend([
        "--manager",
        "g1",
        "--operator",
        "ops",
        "--operator",
        "rogue",
        "--subscriber",
        "s1",
    ]);
    auth_init(ids.path(), &args);
    let ops = ids.path().join("operator-ops.nk");
    let system = System::start_authenticated(&traffic, ids.path(), &["g1", "ops"]).await;

    // The operator stores modules with tmctl under its own identity.
    for (verb, file) in [
        ("analyzer", "packet-count"),
        ("analyzer", "flow-stats"),
        ("apps", "link-load"),
    ] {
        let path = common::wasm_path(file);
        let out = tmctl(&system, &ops, &[verb, "put", path.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
    // Without an identity the server lets nobody in.
    let anonymous = Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["--nats", &system.nats.url(), "monitors"])
        .env_remove("NATS_CREDS")
        .output()
        .unwrap();
    assert_eq!(anonymous.status.code(), Some(1), "{anonymous:?}");
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("authorization"),
        "{anonymous:?}"
    );

    // An operator may act only as itself.
    let posing = tmctl(
        &system,
        &ops,
        &["--as", "g1", "deploy", "packet-count", "--id", "d-posing"],
    );
    assert_eq!(posing.status.code(), Some(2), "{posing:?}");
    assert!(
        String::from_utf8_lossy(&posing.stderr).contains("--as g1"),
        "{posing:?}"
    );
    // A deployment owned by an identity the monitors do not list is refused.
    let rogue = tmctl(
        &system,
        &ids.path().join("operator-rogue.nk"),
        &["deploy", "packet-count", "--id", "d-rogue"],
    );
    assert_eq!(rogue.status.code(), Some(1), "{rogue:?}");
    let stderr = String::from_utf8_lossy(&rogue.stderr);
    assert!(
        stderr.contains("unauthorized") && stderr.contains("owner = \"rogue\""),
        "{stderr}"
    );
    for m in &system.monitors {
        assert!(m.status(&system.client).await.deployments.is_empty());
    }
    // The manager with its own identity runs link-load (the replays start
    // when its flow-stats attaches); the subscriber with its own reads
    // the reports.
    let g1 = ids.path().join("manager-g1.nk");
    let manager = ManagerProc::start(
        &system.nats,
        &system.client,
        "g1",
        &["--nats-creds", g1.to_str().unwrap()],
    )
    .await;
    let sub_seed = ids.path().join("subscriber-s1.nk");
    let subscriber =
        bus_schema::nats::with_credentials(async_nats::ConnectOptions::new(), &sub_seed)
            .await
            .unwrap()
            .connect(system.nats.url())
            .await
            .unwrap();
    let mut reports = Reports::subscribe(&subscriber, "g1", "link-load").await;
    common::load_app(
        &system,
        "g1",
        "link-load",
        serde_json::json!({"every_ms": 300, "prefixes": common::prefixes()}),
    )
    .await;
    let (report, _) = reports
        .until("link-load", Duration::from_secs(60), |b| {
            common::links_match(b, &traffic.taps)
        })
        .await
        .unwrap_or_else(|| panic!("no exact link-load report\n{}", manager.log()));
    assert_eq!(report.manager, "g1");

    // The operator collects the manager's deployment: every packet of
    // every tap.
    let out = tmctl(
        &system,
        &ops,
        &["--json", "collect", "link-load-flow-stats-g1-1"],
    );
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let collected: u64 = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["stats"]["packets_in"].as_u64().unwrap())
        .sum();
    let expected: usize = traffic.frames.values().map(Vec::len).sum();
    assert_eq!(collected, expected as u64, "{json:#}");

    // The operator's own identity may deploy; its windows reach the
    // subscriber through TM_RESULTS from every monitor.
    let out = tmctl(
        &system,
        &ops,
        &[
            "deploy",
            "packet-count",
            "--id",
            "d1",
            "--report-every-ms",
            "300",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let sjs = async_nats::jetstream::new(subscriber);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let windows = harness::stream_windows(&sjs, "d1").await;
        let from: BTreeSet<String> = windows.iter().map(|(_, w)| w.monitor.clone()).collect();
        if from.len() == monitor_ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "windows of d1 only from {from:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nor may an unlisted requester unload it, even with --force.
    let rogue = tmctl(
        &system,
        &ids.path().join("operator-rogue.nk"),
        &["unload", "d1", "--force"],
    );
    assert_eq!(rogue.status.code(), Some(1), "{rogue:?}");
    assert!(
        String::from_utf8_lossy(&rogue.stderr).contains("requester = \"rogue\""),
        "{rogue:?}"
    );
    for m in &system.monitors {
        let status = m.status(&system.client).await;
        assert!(status.deployments.iter().any(|d| d.deployment == "d1"));
    }

    // Nobody stepped outside its rights on the way.
    let log = system.nats.log();
    assert!(
        !log.to_lowercase().contains("violation"),
        "permission violations:\n{}",
        log.lines()
            .filter(|l| l.to_lowercase().contains("violation"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn auth_init_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tmctl"))
            .args(["auth", "init", "--out"])
            .arg(dir.path().join("ids"))
            .args(args)
            .output()
            .unwrap()
    };
    let bad = run(&["--monitor", "a.b"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--monitor") && stderr.contains("\"a.b\""),
        "{stderr}"
    );
    // A monitor's identity is its address.
    let named = run(&["--monitor", "m1"]);
    assert_eq!(named.status.code(), Some(2), "{named:?}");
    assert!(
        String::from_utf8_lossy(&named.stderr).contains("not an IP address"),
        "{named:?}"
    );
    let none = run(&[]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no identities"));
    // A seed file is secret: 0600 in a 0700 directory.
    let ok = run(&["--subscriber", "s1"]);
    assert!(ok.status.success(), "{ok:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("ids")), 0o700);
    assert_eq!(mode(&dir.path().join("ids/subscriber-s1.nk")), 0o600);
}
