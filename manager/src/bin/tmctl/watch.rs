//! `tmctl watch`: results, events and reports as they arrive.

use std::time::Duration;

use anyhow::anyhow;
use async_nats::jetstream::{self, consumer};
use bus_schema::store;
use bus_schema::{Event, Report, ResultWindow, subject};
use futures::StreamExt;
use manager::archive::to_json;
use serde_json::json;

use crate::ops::window_json;
use crate::{BAD_INPUT, Failure, Watched, fail};

/// `tmctl watch`: ordered push consumers on the result, event and report
/// streams, printed as they arrive.
pub(crate) async fn watch(
    js: &jetstream::Context,
    what: Watched,
    only: Option<String>,
    count: Option<u64>,
    from_start: bool,
    idle_s: Option<u64>,
    json: bool,
) -> Result<(), Failure> {
    bus_schema::nats::ensure_stores(js, 1, bus_schema::Role::Operator)
        .await
        .map_err(|e| fail(1, e))?;
    if let Some(o) = &only {
        bus_schema::validate_token("--only", o).map_err(|e| fail(BAD_INPUT, e))?;
    }
    let star = only.clone().unwrap_or_else(|| "*".into());
    let mut sources: Vec<(&str, String)> = Vec::new();
    if matches!(what, Watched::Results | Watched::All) {
        sources.push((store::RESULTS_STREAM, subject::results("*", &star)));
    }
    if matches!(what, Watched::Events | Watched::All) {
        sources.push((store::EVENTS_STREAM, subject::events("*", &star)));
    }
    if matches!(what, Watched::Reports | Watched::All) {
        sources.push((store::REPORTS_STREAM, subject::reports("*", &star)));
    }
    let mut merged = futures::stream::SelectAll::new();
    for (name, filter) in sources {
        let stream = js
            .get_stream(name)
            .await
            .map_err(|e| fail(1, anyhow!("stream {name}: {e}")))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: if from_start {
                    consumer::DeliverPolicy::All
                } else {
                    consumer::DeliverPolicy::New
                },
                ..Default::default()
            })
            .await
            .map_err(|e| fail(1, anyhow!("consumer on {name}: {e}")))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| fail(1, anyhow!("{name}: {e}")))?;
        merged.push(messages.map(move |m| (name, m)));
    }
    // Ready: scripts wait for this line before producing traffic.
    eprintln!("tmctl: watching");
    let mut seen = 0u64;
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        let next = match idle_s {
            Some(s) => match tokio::time::timeout(Duration::from_secs(s), merged.next()).await {
                Ok(n) => n,
                Err(_) => return Ok(()),
            },
            None => merged.next().await,
        };
        let Some((stream, message)) = next else {
            return Ok(());
        };
        let message = message.map_err(|e| fail(1, anyhow!("{stream}: {e}")))?;
        seen += 1;
        print_message(stream, &message.payload, json);
    }
}

fn print_message(stream: &str, payload: &[u8], json: bool) {
    if stream == store::RESULTS_STREAM {
        match bus_schema::decode::<ResultWindow>(payload) {
            Ok(w) if json => println!(
                "{}",
                json!({"type": "results", "window": window_json("", &w)})
            ),
            Ok(w) => println!(
                "results {} {} seq={} last={} packets_in={} bytes_in={} dropped={} {}",
                w.monitor,
                w.deployment,
                w.seq,
                w.last,
                w.stats.packets_in,
                w.stats.bytes_in,
                w.stats.dropped,
                to_json(&w.results)
            ),
            Err(e) => eprintln!("tmctl: unreadable result window: {e}"),
        }
    } else if stream == store::EVENTS_STREAM {
        match bus_schema::decode::<Event>(payload) {
            Ok(e) if json => println!(
                "{}",
                json!({"type": "event", "monitor": e.monitor, "deployment": e.deployment, "seq": e.seq,
                    "at_unix_ms": e.at_unix_ms, "kind": serde_json::to_value(e.kind).unwrap_or_default(),
                    "message": e.message, "data": to_json(&e.data)})
            ),
            Ok(e) => println!(
                "event {} {} {:?}: {} {}",
                e.monitor,
                e.deployment,
                e.kind,
                e.message,
                to_json(&e.data)
            ),
            Err(e) => eprintln!("tmctl: unreadable event: {e}"),
        }
    } else {
        match bus_schema::decode::<Report>(payload) {
            Ok(r) if json => println!(
                "{}",
                json!({"type": "report", "manager": r.manager, "app": r.app, "seq": r.seq,
                    "at_unix_ms": r.at_unix_ms, "kind": r.kind, "body": to_json(&r.body)})
            ),
            Ok(r) => println!(
                "report {} {} {} #{}: {}",
                r.manager,
                r.app,
                r.kind,
                r.seq,
                to_json(&r.body)
            ),
            Err(e) => eprintln!("tmctl: unreadable report: {e}"),
        }
    }
}
