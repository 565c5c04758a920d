//! Keeps `docs/bus.md` in step with the code, and checks that every message
//! round-trips through MessagePack and refuses bad bytes without panicking.
//!
//! The documented examples are the sample messages: each ```json block tagged
//! with a type name is decoded with the real type.

use std::collections::{BTreeSet, HashMap};

use bus_schema::store::{self, BucketKind};
use bus_schema::subject::{self, SubjectKind};
use bus_schema::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bus.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// (type name, JSON text) of every tagged example block.
fn examples(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(tag) = line.strip_prefix("```json ") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            out.push((tag.trim().to_owned(), body.join("\n")));
        }
    }
    out
}

/// What one example showed about its type.
struct Checked {
    /// MessagePack encoding of the decoded value.
    msgpack: Vec<u8>,
    /// Names of the type's fields that hold free-form values.
    free_form: &'static [&'static str],
}

/// Decodes `json` as `T`, round-trips it through MessagePack and back to
/// JSON, and checks that nothing changed on the way.
fn check<T>(name: &str, json: &str, free_form: &'static [&'static str]) -> Checked
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let original: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("example {name} is not JSON: {e}\n{json}"));
    let value: T = serde_json::from_value(original.clone())
        .unwrap_or_else(|e| panic!("example {name} does not decode as {name}: {e}\n{json}"));
    let msgpack = encode(&value).unwrap();
    let back: T = decode(&msgpack).unwrap_or_else(|e| panic!("{name} does not round-trip: {e}"));
    assert_eq!(back, value, "{name} changed in a MessagePack round trip");
    let rendered = serde_json::to_value(&back).unwrap();
    assert_eq!(
        rendered, original,
        "example {name} must show every field exactly as the code renders it"
    );
    // Field names, not positions: the top level is a map (or a one-key map for enums).
    assert!(
        matches!(msgpack[0], 0x80..=0x8f | 0xde | 0xdf),
        "{name} is not encoded as a map (first byte {:#x})",
        msgpack[0]
    );
    Checked { msgpack, free_form }
}

/// Type name → checker. Every type that travels on the bus is listed here.
fn checker(name: &str, json: &str) -> Option<Checked> {
    Some(match name {
        "LoadRequest" => check::<LoadRequest>(name, json, &["params"]),
        "LoadReply" => check::<LoadReply>(name, json, &[]),
        "UnloadRequest" => check::<UnloadRequest>(name, json, &[]),
        "UnloadReply" => check::<UnloadReply>(name, json, &[]),
        "CollectRequest" => check::<CollectRequest>(name, json, &[]),
        "ConfigureRequest" => check::<ConfigureRequest>(name, json, &["params"]),
        "ConfigureReply" => check::<ConfigureReply>(name, json, &[]),
        "UpgradeRequest" => check::<UpgradeRequest>(name, json, &[]),
        "UpgradeReply" => check::<UpgradeReply>(name, json, &[]),
        "StatusRequest" => check::<StatusRequest>(name, json, &[]),
        "MonitorStatus" => check::<MonitorStatus>(name, json, &[]),
        "ResultWindow" => check::<ResultWindow>(name, json, &["results"]),
        "Event" => check::<Event>(name, json, &["data"]),
        "AppLoadRequest" => check::<AppLoadRequest>(name, json, &["params"]),
        "AppUnloadRequest" => check::<AppUnloadRequest>(name, json, &[]),
        "AppListRequest" => check::<AppListRequest>(name, json, &[]),
        "AppStatus" => check::<AppStatus>(name, json, &[]),
        "AppList" => check::<AppList>(name, json, &[]),
        "Report" => check::<Report>(name, json, &["body"]),
        "MonitorRecord" => check::<MonitorRecord>(name, json, &[]),
        "ManagerRecord" => check::<ManagerRecord>(name, json, &[]),
        "DeploymentRecord" => check::<DeploymentRecord>(name, json, &["params"]),
        "TopologyRecord" => check::<TopologyRecord>(name, json, &[]),
        "DeploymentSnapshot" => check::<DeploymentSnapshot>(name, json, &["state"]),
        "ErrorBody" => check::<ErrorBody>(name, json, &[]),
        "Reply<LoadReply>" => check::<Reply<LoadReply>>(name, json, &[]),
        _ => return None,
    })
}

/// Types that must have at least one example besides those named in the
/// subject catalogue.
const RECORD_TYPES: &[&str] = &[
    "MonitorRecord",
    "ManagerRecord",
    "DeploymentRecord",
    "TopologyRecord",
    "ErrorBody",
];

#[test]
fn every_documented_example_decodes_with_the_real_type() {
    let doc = doc();
    let examples = examples(&doc);
    assert!(
        examples.len() >= 20,
        "found only {} examples",
        examples.len()
    );
    for (name, json) in &examples {
        assert!(
            checker(name, json).is_some(),
            "docs/bus.md has an example of unknown type {name}"
        );
    }
}

#[test]
fn every_message_type_has_an_example() {
    let doc = doc();
    let documented: BTreeSet<String> = examples(&doc).into_iter().map(|(n, _)| n).collect();
    let mut needed: BTreeSet<&str> = RECORD_TYPES.iter().copied().collect();
    for spec in subject::catalog() {
        if !spec.payload.is_empty() {
            needed.insert(spec.payload);
        }
        needed.extend(spec.reply);
    }
    let missing: Vec<_> = needed
        .iter()
        .filter(|n| !documented.contains(**n))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/bus.md lacks examples of {missing:?}"
    );
}

fn kind_name(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Command => "command",
        SubjectKind::Stream => "stream",
        SubjectKind::Wildcard => "wildcard",
    }
}

fn roles(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "—".into();
    }
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn subject_table_matches_the_code_both_ways() {
    let doc = doc();
    let catalog = subject::catalog();
    for spec in &catalog {
        let row = format!(
            "| `{}` | {} | {} | {} | {} | {} |",
            spec.pattern,
            kind_name(spec.kind),
            if spec.payload.is_empty() {
                "—"
            } else {
                spec.payload
            },
            spec.reply.unwrap_or("—"),
            roles(spec.publishers),
            roles(spec.subscribers),
        );
        assert!(
            doc.lines().any(|l| l == row),
            "docs/bus.md lacks the row\n{row}"
        );
    }
    // The reverse: every subject the doc names must exist in the code.
    let known: BTreeSet<String> = catalog.iter().map(|s| s.pattern.clone()).collect();
    let named: BTreeSet<String> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("tm.v1."))
        .map(str::to_owned)
        .collect();
    let unknown: Vec<_> = named.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "docs/bus.md names subjects the code lacks: {unknown:?}"
    );
}

fn age(d: Option<std::time::Duration>) -> String {
    d.map_or("none".into(), |d| format!("{} s", d.as_secs()))
}

#[test]
fn bucket_and_stream_tables_match_the_code() {
    let doc = doc();
    for b in store::buckets() {
        let kind = match b.kind {
            BucketKind::KeyValue => "key-value",
            BucketKind::Object => "object store",
        };
        let row = format!(
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            b.name,
            kind,
            b.history,
            age(b.max_age),
            roles(b.writers),
            roles(b.readers),
            b.description
        );
        assert!(
            doc.lines().any(|l| l == row),
            "docs/bus.md lacks the bucket row\n{row}"
        );
    }
    for s in store::streams() {
        let subjects: Vec<String> = s.subjects.iter().map(|x| format!("`{x}`")).collect();
        let row = format!(
            "| `{}` | {} | {} | limits | {} | {} | {} |",
            s.name,
            subjects.join(", "),
            store::STORAGE,
            age(Some(s.max_age)),
            age(Some(s.duplicate_window)),
            s.description
        );
        assert!(
            doc.lines().any(|l| l == row),
            "docs/bus.md lacks the stream row\n{row}"
        );
    }
    for key in [
        store::meta_key::KIND,
        store::meta_key::VERSION,
        store::meta_key::SHA256,
        store::meta_key::ABI,
        store::meta_key::DESCRIPTION,
    ] {
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "docs/bus.md lacks blob metadata key {key}"
        );
    }
}

/// Decodes `bytes` as the type called `name`, reporting only success.
fn decodes_as(name: &str, bytes: &[u8]) -> bool {
    match name {
        "LoadRequest" => decode::<LoadRequest>(bytes).is_ok(),
        "LoadReply" => decode::<LoadReply>(bytes).is_ok(),
        "UnloadRequest" => decode::<UnloadRequest>(bytes).is_ok(),
        "UnloadReply" => decode::<UnloadReply>(bytes).is_ok(),
        "CollectRequest" => decode::<CollectRequest>(bytes).is_ok(),
        "ConfigureRequest" => decode::<ConfigureRequest>(bytes).is_ok(),
        "ConfigureReply" => decode::<ConfigureReply>(bytes).is_ok(),
        "UpgradeRequest" => decode::<UpgradeRequest>(bytes).is_ok(),
        "UpgradeReply" => decode::<UpgradeReply>(bytes).is_ok(),
        "StatusRequest" => decode::<StatusRequest>(bytes).is_ok(),
        "MonitorStatus" => decode::<MonitorStatus>(bytes).is_ok(),
        "ResultWindow" => decode::<ResultWindow>(bytes).is_ok(),
        "Event" => decode::<Event>(bytes).is_ok(),
        "AppLoadRequest" => decode::<AppLoadRequest>(bytes).is_ok(),
        "AppUnloadRequest" => decode::<AppUnloadRequest>(bytes).is_ok(),
        "AppListRequest" => decode::<AppListRequest>(bytes).is_ok(),
        "AppStatus" => decode::<AppStatus>(bytes).is_ok(),
        "AppList" => decode::<AppList>(bytes).is_ok(),
        "Report" => decode::<Report>(bytes).is_ok(),
        "MonitorRecord" => decode::<MonitorRecord>(bytes).is_ok(),
        "ManagerRecord" => decode::<ManagerRecord>(bytes).is_ok(),
        "DeploymentRecord" => decode::<DeploymentRecord>(bytes).is_ok(),
        "TopologyRecord" => decode::<TopologyRecord>(bytes).is_ok(),
        "DeploymentSnapshot" => decode::<DeploymentSnapshot>(bytes).is_ok(),
        "ErrorBody" => decode::<ErrorBody>(bytes).is_ok(),
        "Reply<LoadReply>" => decode::<Reply<LoadReply>>(bytes).is_ok(),
        other => panic!("no decoder for {other}"),
    }
}

#[test]
fn truncated_messages_are_refused() {
    for (name, json) in examples(&doc()) {
        let Checked { msgpack, .. } = checker(&name, &json).unwrap();
        for cut in 0..msgpack.len() {
            assert!(
                !decodes_as(&name, &msgpack[..cut]),
                "{name} truncated to {cut} of {} bytes decoded",
                msgpack.len()
            );
        }
    }
}

/// A value of a different MessagePack type than `v`.
fn other_type(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::String(_) => J::from(12345),
        J::Number(_) | J::Bool(_) | J::Null => J::from("not this type"),
        J::Array(_) => J::from(7),
        J::Object(_) => J::from("not a map"),
    }
}

#[test]
fn wrong_typed_fields_are_refused() {
    let mut tried = 0;
    for (name, json) in examples(&doc()) {
        let Checked { free_form, .. } = checker(&name, &json).unwrap();
        let serde_json::Value::Object(fields) = serde_json::from_str(&json).unwrap() else {
            panic!("{name} example is not an object");
        };
        for (field, value) in &fields {
            // Free-form values accept anything; an absent optional is fine too,
            // but a string where an Option<String> is expected is not tested
            // through null (null is valid).
            if free_form.contains(&field.as_str()) || value.is_null() {
                continue;
            }
            let mut bad: HashMap<String, serde_json::Value> =
                fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            bad.insert(field.clone(), other_type(value));
            let bytes = rmp_serde::to_vec_named(&bad).unwrap();
            assert!(
                !decodes_as(&name, &bytes),
                "{name} accepted a wrong type in field {field}"
            );
            tried += 1;
        }
    }
    assert!(tried > 50, "only {tried} wrong-typed fields tried");
}

#[test]
fn garbage_is_refused_without_panic() {
    let names: Vec<String> = examples(&doc()).into_iter().map(|(n, _)| n).collect();
    // Bytes that can never be a message: reserved marker, empty input, a nil,
    // and lengths far beyond the input (must not allocate them).
    let fixed: &[&[u8]] = &[
        &[],
        &[0xc1],
        &[0xc0],
        &[0xdf, 0xff, 0xff, 0xff, 0xff],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
        &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        &[
            0x81, 0xa4, b'n', b'a', b'm', b'e', 0xc6, 0xff, 0xff, 0xff, 0xff,
        ],
    ];
    for name in &names {
        for bytes in fixed {
            assert!(!decodes_as(name, bytes), "{name} decoded {bytes:x?}");
        }
    }
    // Deterministic pseudo-random bytes: any outcome but a panic is fine.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        for name in &names {
            let _ = decodes_as(name, &bytes);
        }
    }
}

#[test]
fn unknown_error_codes_decode_as_unknown() {
    let bytes = rmp_serde::to_vec_named(&HashMap::from([
        ("code", "from_the_future"),
        ("message", "x"),
    ]))
    .unwrap();
    let body: ErrorBody = decode(&bytes).unwrap();
    assert_eq!(body.code, ErrorCode::Unknown);
}

#[test]
fn error_codes_render_as_on_the_wire() {
    let doc = doc();
    for code in ErrorCode::ALL
        .into_iter()
        .filter(|c| *c != ErrorCode::Unknown)
    {
        let json = serde_json::to_value(code).unwrap();
        assert_eq!(json, serde_json::Value::from(code.as_str()));
        assert!(
            doc.contains(&format!("`{}`", code.as_str())),
            "docs/bus.md does not list error code {code}"
        );
    }
}
