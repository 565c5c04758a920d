//! dns-stats run by the real monitor on pcapgen's DNS exchanges: exact
//! query types, response codes, top names, latency and unanswered queries
//! against the generator's truth; corrupted captures analyzed without a
//! trap; bad params refused with the field named.

mod common;

use std::collections::BTreeMap;

use bus_schema::{
    BlobRef, ConfigureReply, ConfigureRequest, DeploymentState, ErrorCode, Filter, LoadReply,
    LoadRequest, Value, subject,
};
use common::{Run, collect, field, put_blob, request, run, u, wasm};
use pcapgen::dns::{TRUTH_TIMEOUT_MS, exchanges};

const START_NS: u64 = 1_764_000_000_000_000_000;

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// A results map of counts as a sorted map.
fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_map()
        .unwrap_or_else(|| panic!("not a map: {v}"))
        .iter()
        .map(|(k, n)| (k.as_str().unwrap().to_string(), n.as_u64().unwrap()))
        .collect()
}

/// Nearest-rank percentile of sorted values.
fn nearest_rank(sorted: &[u64], p: usize) -> u64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn params() -> Value {
    map(vec![
        ("ports", Value::Array(vec![5353.into()])),
        ("timeout_ms", TRUTH_TIMEOUT_MS.into()),
        ("top_n", 5.into()),
    ])
}

/// Every figure of the exchanges, exactly as the generator made them.
#[tokio::test]
async fn dns_stats_gives_the_exact_figures_of_the_exchanges() {
    let (frames, truth) = exchanges(START_NS);
    let timeout_ns = TRUTH_TIMEOUT_MS * 1_000_000;
    assert!(truth.latencies_ns.iter().all(|&l| l < timeout_ns));
    assert!(truth.min_unanswered_age_ns > timeout_ns);
    let r = run(&frames, &[("dns-stats", params())]).await;
    let res = collect(&r, "dns-stats").await;
    eprintln!("dns-stats on the exchanges: {res}");
    assert_eq!(u(&res, "packets"), truth.frames);
    assert_eq!(u(&res, "dns_packets"), truth.dns_packets);
    assert_eq!(u(&res, "other_packets"), truth.frames - truth.dns_packets);
    assert_eq!(
        (
            u(&res, "queries"),
            u(&res, "responses"),
            u(&res, "malformed"),
            u(&res, "truncated")
        ),
        (truth.queries, truth.responses, truth.malformed, 0)
    );
    assert_eq!(counts(field(&res, "qtypes")), truth.qtypes);
    assert_eq!(counts(field(&res, "rcodes")), truth.rcodes);

    // Top 5 names by queries, ties by name.
    let mut names: Vec<(&String, &u64)> = truth.names.iter().collect();
    names.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let expected: Vec<(String, u64)> = names
        .iter()
        .take(5)
        .map(|&(n, q)| (n.clone(), *q))
        .collect();
    let top: Vec<(String, u64)> = field(&res, "top_names")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                field(e, "name").as_str().unwrap().to_string(),
                u(e, "queries"),
            )
        })
        .collect();
    assert_eq!(top, expected);
    assert_eq!(u(&res, "names"), truth.names.len() as u64);
    assert_eq!(u(&res, "untracked_name_queries"), 0);

    let mut us: Vec<u64> = truth.latencies_ns.iter().map(|l| l / 1000).collect();
    us.sort_unstable();
    let n = us.len() as u64;
    let lat = field(&res, "latency_us");
    let got = [
        "count", "min", "mean", "max", "p50", "p90", "p99", "samples",
    ]
    .map(|k| u(lat, k));
    let want = [
        n,
        us[0],
        us.iter().sum::<u64>() / n,
        us[us.len() - 1],
        nearest_rank(&us, 50),
        nearest_rank(&us, 90),
        nearest_rank(&us, 99),
        n,
    ];
    assert_eq!(got, want, "count, min, mean, max, p50, p90, p99, samples");

    assert_eq!(
        (
            u(&res, "pending"),
            u(&res, "unanswered"),
            u(&res, "unmatched_responses"),
            u(&res, "untracked_queries"),
            u(&res, "duplicate_queries"),
        ),
        (0, truth.unanswered, truth.unmatched_responses, 0, 0)
    );

    // configure: fewer names shown, counts kept; a bad value is named and changes nothing.
    let reply: ConfigureReply = configure(&r, map(vec![("top_n", 2.into())]))
        .await
        .into_result()
        .unwrap();
    assert_eq!(reply.config_revision, 1);
    let res2 = collect(&r, "dns-stats").await;
    assert_eq!(field(&res2, "top_names").as_array().unwrap().len(), 2);
    assert_eq!(u(&res2, "queries"), truth.queries);
    let e = configure(&r, map(vec![("latency_samples", 0.into())]))
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(e.message.contains("latency_samples = 0"), "{e:?}");
    let res3 = collect(&r, "dns-stats").await;
    assert_eq!(field(&res3, "top_names").as_array().unwrap().len(), 2);
}

async fn configure(r: &Run, params: Value) -> bus_schema::Reply<ConfigureReply> {
    request(
        &r.client,
        subject::monitor_configure("a", "t"),
        &ConfigureRequest {
            deployment: "dns-stats".into(),
            requester: "t".into(),
            params,
            force: false,
        },
    )
    .await
}

/// Byte flips and truncations on the exchanges: every packet is analyzed
/// and lands in exactly one bucket, the deployment keeps running, and
/// loads with bad params are refused naming the field.
#[tokio::test]
async fn corrupted_dns_is_analyzed_without_a_trap_and_bad_params_are_named() {
    let (mut frames, truth) = exchanges(START_NS);
    pcapgen::corrupt(&mut frames, 0x5eed_d15c, 3);
    let r = run(&frames, &[("dns-stats", params())]).await;
    let st = r.monitor.status(&r.client).await;
    let d = &st.deployments[0];
    assert_eq!(
        d.state,
        DeploymentState::Running,
        "dns-stats failed: {:?}",
        d.last_error
    );
    let res = collect(&r, "dns-stats").await;
    eprintln!("dns-stats on the corrupted exchanges: {res}");
    let total = frames.len() as u64;
    assert_eq!(u(&res, "packets"), total);
    assert_eq!(u(&res, "dns_packets") + u(&res, "other_packets"), total);
    let messages = ["queries", "responses", "malformed", "truncated"]
        .iter()
        .map(|k| u(&res, k))
        .sum::<u64>();
    assert!(
        messages >= u(&res, "dns_packets"),
        "each DNS packet holds at least one message: {res}"
    );
    assert!(u(&res, "malformed") > truth.malformed / 2, "{res}");
    assert!(u(&res, "truncated") > 0, "{res}");
    assert!(
        u(&res, "queries") < truth.queries,
        "the corruption spared every query: {res}"
    );
    assert!(st.links[0].parse_errors > 0);

    // Bad params on load: refused, the field and value named.
    let js = async_nats::jetstream::new(r.client.clone());
    let sha = put_blob(&js, "dns-stats", &wasm("dns-stats")).await;
    for (params, needle) in [
        (map(vec![("timeout_ms", 0.into())]), "timeout_ms = 0"),
        (
            map(vec![("ports", Value::Array(vec![53.into(), 0.into()]))]),
            "ports[1] = 0",
        ),
        (
            map(vec![("max_names", 2_000_000.into())]),
            "max_names = 2000000",
        ),
        (map(vec![("top", 3.into())]), "unknown field `top`"),
    ] {
        let e = request::<_, LoadReply>(
            &r.client,
            subject::monitor_load("a", "t"),
            &LoadRequest {
                deployment: "dns-bad".into(),
                analyzer: BlobRef {
                    name: "dns-stats".into(),
                    sha256: sha.clone(),
                },
                params,
                filter: Filter::default(),
                links: vec![0],
                owner: "t".into(),
                report_every_ms: None,
            },
        )
        .await
        .into_result()
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadParams, "{e:?}");
        assert!(e.message.contains(needle), "expected {needle:?} in {e:?}");
    }
    assert_eq!(r.monitor.status(&r.client).await.deployments.len(), 1);
}
