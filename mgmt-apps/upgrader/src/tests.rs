use std::cell::RefCell;
use std::rc::Rc;

use serde::Deserialize;
use tm_app_sdk::api::{self, Reply};
use tm_app_sdk::{decode, decode_params, encode, App};

use super::*;

fn module(name: &str, sha256: &str) -> ModuleRef {
    ModuleRef {
        name: name.into(),
        sha256: sha256.into(),
    }
}

fn swapped(monitor: &str, swap_us: u64) -> Swapped {
    Swapped {
        monitor: monitor.into(),
        previous: module("flow-stats", "aa"),
        swap_us,
    }
}

fn refused(monitor: &str) -> Missing {
    Missing {
        monitor: monitor.into(),
        code: "restore_refused".into(),
        message: "the new module refused the state".into(),
    }
}

fn outcome(done: Vec<Swapped>, failed: Vec<Missing>, skipped: &[&str]) -> Upgraded {
    Upgraded {
        deployment: "f1".into(),
        analyzer: module("flow-stats-2", "bb"),
        done,
        failed,
        skipped: skipped.iter().map(|s| s.to_string()).collect(),
    }
}

fn map(entries: &[(&str, Any)]) -> Any {
    Any::Map(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

#[test]
fn params_are_checked_naming_the_field_and_value() {
    let p = |deployment: &str, blob: &str| Params {
        deployment: deployment.into(),
        blob: blob.into(),
        params: None,
    };
    assert_eq!(p("f1", "flow-stats-2").check(), Ok(()));
    assert_eq!(
        p("", "flow-stats-2").check(),
        Err("deployment = \"\": it is empty".to_string())
    );
    assert_eq!(
        p("f.1", "flow-stats-2").check(),
        Err("deployment = \"f.1\": only letters, digits, '_' and '-' are allowed".to_string())
    );
    assert_eq!(
        p("f1", "").check(),
        Err("blob = \"\": it is empty".to_string())
    );
    let long = "x".repeat(65);
    assert_eq!(
        p("f1", &long).check(),
        Err(format!(
            "blob = {:?}: it is longer than 64 characters",
            long
        ))
    );
    // Absent params decode as defaults (and then fail the check); an
    // unknown field is refused by name.
    let empty: Params = decode_params(&[]).unwrap();
    assert_eq!(empty, Params::default());
    let e = decode_params::<Params>(&encode(&map(&[("blb", Any::Str("x".into()))])).unwrap())
        .unwrap_err();
    assert!(e.contains("blb"), "{}", e);
    let e =
        decode_params::<Params>(&encode(&map(&[("blob", Any::Unsigned(3))])).unwrap()).unwrap_err();
    assert!(e.starts_with("bad params"), "{}", e);
}

#[test]
fn params_pass_through_unchanged() {
    let inner = map(&[
        ("top_n", Any::Unsigned(3)),
        ("offset", Any::Signed(-7)),
        ("ratio", Any::Float(0.25)),
        ("name", Any::Str("x".into())),
        (
            "list",
            Any::Array(vec![Any::Bool(true), Any::Nil, map(&[])]),
        ),
    ]);
    let bytes = encode(&map(&[
        ("deployment", Any::Str("f1".into())),
        ("blob", Any::Str("flow-stats-2".into())),
        ("params", inner.clone()),
    ]))
    .unwrap();
    let p: Params = decode_params(&bytes).unwrap();
    assert_eq!(p.params, Some(inner.clone()));
    // What the app sends on is what an analyzer's own types read.
    #[derive(Deserialize)]
    struct Seen {
        top_n: u32,
        offset: i32,
        ratio: f64,
        name: String,
        list: (bool, Option<u8>, BTreeMap<String, u8>),
    }
    let seen: Seen = decode(&encode(&inner).unwrap()).unwrap();
    assert_eq!(
        (seen.top_n, seen.offset, seen.ratio, seen.name.as_str()),
        (3, -7, 0.25, "x")
    );
    assert_eq!(seen.list, (true, None, BTreeMap::new()));
    // `params: null` is no params.
    let bytes = encode(&map(&[
        ("deployment", Any::Str("f1".into())),
        ("blob", Any::Str("b".into())),
        ("params", Any::Nil),
    ]))
    .unwrap();
    assert_eq!(decode_params::<Params>(&bytes).unwrap().params, None);
}

#[test]
fn the_report_says_who_runs_which_module() {
    let all = build_report(outcome(
        vec![swapped("m1", 120), swapped("m2", 80)],
        vec![],
        &[],
    ));
    assert!(all.complete);
    assert_eq!(all.upgraded.len(), 2);
    assert_eq!(
        summary(&all),
        "upgrade of f1 to flow-stats-2 (bb): 2 of 2 monitors run it; \
         the deployment's record names the new module"
    );

    let stopped = build_report(outcome(
        vec![swapped("m1", 120)],
        vec![refused("m2")],
        &["m3", "m4"],
    ));
    assert!(!stopped.complete);
    assert_eq!(stopped.refused, vec![refused("m2")]);
    assert_eq!(stopped.skipped, vec!["m3".to_string(), "m4".to_string()]);
    assert_eq!(
        summary(&stopped),
        "upgrade of f1 to flow-stats-2 (bb): 1 of 4 monitors run it; \
         m2 refused (restore_refused: the new module refused the state); \
         not asked, on the old module: m3, m4; \
         the deployment's record keeps the old module"
    );
}

fn reply<T: Serialize>(v: T) -> Vec<u8> {
    encode(&Reply::Ok(v)).unwrap()
}

/// The report as the host receives it.
#[derive(Debug, Deserialize)]
struct SeenReport {
    deployment: String,
    analyzer: ModuleRef,
    complete: bool,
    upgraded: Vec<Swapped>,
    refused: Vec<Missing>,
    skipped: Vec<String>,
}

#[test]
fn start_rolls_the_upgrade_then_publishes_one_report() {
    let calls = Rc::new(RefCell::new(Vec::<String>::new()));
    let published = Rc::new(RefCell::new(None::<SeenReport>));
    let (c, p) = (calls.clone(), published.clone());
    tm_app_sdk::native::set_host(move |op, req| {
        c.borrow_mut().push(op.to_string());
        match op {
            "upgrade" => {
                let q: api::Upgrade<Any> = decode(req).unwrap();
                assert_eq!(q.deployment, "f1");
                assert_eq!(q.blob, "flow-stats-2");
                assert_eq!(q.params, Some(map(&[("top_n", Any::Unsigned(1))])));
                reply(outcome(
                    vec![swapped("m1", 120)],
                    vec![refused("m2")],
                    &["m3"],
                ))
            }
            "publish" => {
                let q: api::Publish<SeenReport> = decode(req).unwrap();
                assert_eq!(q.kind, "upgrade");
                *p.borrow_mut() = Some(q.body);
                reply(1u64)
            }
            other => panic!("unexpected op {}", other),
        }
    });
    let app = Upgrader::start(Params {
        deployment: "f1".into(),
        blob: "flow-stats-2".into(),
        params: Some(map(&[("top_n", Any::Unsigned(1))])),
    })
    .unwrap();
    assert_eq!(*calls.borrow(), vec!["upgrade", "publish"]);
    let seen = published.borrow_mut().take().unwrap();
    assert_eq!(seen.deployment, "f1");
    assert_eq!(seen.analyzer, module("flow-stats-2", "bb"));
    assert!(!seen.complete);
    assert_eq!(seen.upgraded, vec![swapped("m1", 120)]);
    assert_eq!(seen.refused, vec![refused("m2")]);
    assert_eq!(seen.skipped, vec!["m3".to_string()]);
    assert_eq!(app.report.upgraded, seen.upgraded);
}

#[test]
fn start_without_params_sends_none_and_a_refused_request_refuses_the_load() {
    let calls = Rc::new(RefCell::new(0u32));
    let c = calls.clone();
    tm_app_sdk::native::set_host(move |op, req| {
        assert_eq!(op, "upgrade");
        *c.borrow_mut() += 1;
        let q: api::Upgrade<Any> = decode(req).unwrap();
        assert_eq!(q.params, None);
        encode(&Reply::<()>::Err(api::CallError {
            code: "not_owner".into(),
            message: "deployment \"f1\" is owned by \"tmctl\"".into(),
        }))
        .unwrap()
    });
    let e = Upgrader::start(Params {
        deployment: "f1".into(),
        blob: "flow-stats-2".into(),
        params: None,
    })
    .err()
    .unwrap();
    assert_eq!(
        e,
        "upgrade of deployment = \"f1\" to blob = \"flow-stats-2\": \
         not_owner: deployment \"f1\" is owned by \"tmctl\""
    );
    // Bad params never reach the host.
    let e = Upgrader::start(Params {
        deployment: "f1".into(),
        blob: "a b".into(),
        params: None,
    })
    .err()
    .unwrap();
    assert!(e.starts_with("blob = \"a b\""), "{}", e);
    assert_eq!(*calls.borrow(), 1);
}
