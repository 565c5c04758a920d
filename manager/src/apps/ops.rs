//! The host operations an app reaches through its `call` import, one
//! function per op (`tm-app-api::op`): the topology, the monitors, the
//! deployments through [`Control`] (deploy, configure, upgrade, collect,
//! unload), reports, the archive, timers and event subscriptions. Each
//! reply is an encoded `api::Reply` envelope.

use std::collections::HashMap;
use std::time::Duration;

use bus_schema::{ErrorBody, ErrorCode, Event, Report, Value, subject};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tm_app_api as api;
use tokio::sync::mpsc;

use super::guest::Ctx;
use super::views::{
    collected, deployed, event_view, filter, link_view, missing, monitor_view, status_view,
    upgraded,
};
use super::{Msg, Shared, refuse};
use crate::archive::Archive;
use crate::control::{self, Control, DeploySpec, Targets, now_ms};
use crate::topology::{self, Topology};

/// Runs one host call for an app; the reply is an encoded envelope.
pub(super) async fn dispatch(ctx: &mut Ctx, op: &str, request: &[u8]) -> Vec<u8> {
    let shared = ctx.shared.clone();
    let shared = &*shared;
    match op {
        api::op::TOPOLOGY => encode_reply(topology(shared).await),
        api::op::SHORTEST_PATH => encode_reply(shortest_path(shared, request).await),
        api::op::FLOW_PATH => encode_reply(flow_path(shared, request).await),
        api::op::NEIGHBOURS => encode_reply(neighbours(shared, request).await),
        api::op::UNMONITORED => encode_reply(unmonitored(shared).await),
        api::op::MONITORS => encode_reply(monitors(shared).await),
        api::op::STATUS => encode_reply(status(shared, request).await),
        api::op::DEPLOY => encode_reply(deploy(ctx, request).await),
        api::op::CONFIGURE => encode_reply(configure(shared, request).await),
        api::op::UPGRADE => encode_reply(upgrade(shared, request).await),
        api::op::COLLECT => encode_reply(collect(shared, request).await),
        api::op::UNLOAD => encode_reply(unload(ctx, request).await),
        api::op::PUBLISH => encode_reply(publish(ctx, request).await),
        api::op::ARCHIVE => encode_reply(archive(ctx, request).await),
        api::op::SET_TIMER => encode_reply(set_timer(ctx, request)),
        api::op::CANCEL_TIMER => encode_reply(cancel_timer(ctx, request)),
        api::op::SUBSCRIBE => encode_reply(subscribe(ctx, request).await),
        other => encode_reply::<()>(refuse(
            ErrorCode::BadRequest,
            format!("op = {other:?}: no such host operation"),
        )),
    }
}

fn encode_reply<T: Serialize>(reply: Result<T, ErrorBody>) -> Vec<u8> {
    let envelope = match reply {
        Ok(v) => api::Reply::Ok(v),
        Err(e) => api::Reply::Err(api::CallError {
            code: e.code.as_str().to_owned(),
            message: e.message,
        }),
    };
    rmp_serde::to_vec_named(&envelope).unwrap_or_else(|e| {
        rmp_serde::to_vec_named(&api::Reply::<()>::Err(api::CallError {
            code: "internal".into(),
            message: format!("cannot encode the reply: {e}"),
        }))
        .unwrap_or_default()
    })
}

fn decode_request<T: DeserializeOwned>(op: &str, bytes: &[u8]) -> Result<T, ErrorBody> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("{op}: bad request: {e}")))
}

fn bad_token(e: impl ToString) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, e.to_string())
}

async fn load_topology(shared: &Shared) -> Result<(Topology, u64), ErrorBody> {
    match topology::load(&shared.topology).await {
        Ok(Some(stored)) => Ok((stored.topology, stored.revision)),
        Ok(None) => refuse(
            ErrorCode::Unavailable,
            "no topology is stored: import one with `tmctl topology import FILE`",
        ),
        Err(e) => refuse(ErrorCode::Unavailable, e.to_string()),
    }
}

fn router(field: &str, text: &str) -> Result<std::net::IpAddr, ErrorBody> {
    text.parse().map_err(|_| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("{field} = {text:?} is not a router address"),
        )
    })
}

fn query<T>(r: Result<T, topology::QueryError>) -> Result<T, ErrorBody> {
    r.map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
}

/// How long each monitor gets to answer: as asked (default 2 s), 1 ms to 60 s.
fn monitor_timeout(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(2000).clamp(1, 60_000))
}

fn archive_of(shared: &Shared) -> Result<&Archive, ErrorBody> {
    shared.archive.as_ref().ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            "archive: this manager has no archive (start it with --archive)",
        )
    })
}

async fn topology(shared: &Shared) -> Result<api::TopologyView, ErrorBody> {
    let (t, revision) = load_topology(shared).await?;
    Ok(api::TopologyView {
        revision,
        routers: t.routers().iter().map(ToString::to_string).collect(),
        links: t.links().into_iter().map(link_view).collect(),
    })
}

/// The shortest path between the routers `op`'s request names, as `view`
/// gives it.
async fn path<T>(
    shared: &Shared,
    op: &str,
    request: &[u8],
    view: impl FnOnce(topology::Path<'_>) -> T,
) -> Result<T, ErrorBody> {
    let q: api::RouterPair = decode_request(op, request)?;
    let (from, to) = (router("from", &q.from)?, router("to", &q.to)?);
    let (t, _) = load_topology(shared).await?;
    query(t.shortest_path(from, to)).map(view)
}

async fn shortest_path(shared: &Shared, request: &[u8]) -> Result<Vec<String>, ErrorBody> {
    path(shared, api::op::SHORTEST_PATH, request, |p| {
        p.routers.iter().map(ToString::to_string).collect()
    })
    .await
}

async fn flow_path(shared: &Shared, request: &[u8]) -> Result<Vec<api::LinkView>, ErrorBody> {
    path(shared, api::op::FLOW_PATH, request, |p| {
        p.links.into_iter().map(link_view).collect()
    })
    .await
}

async fn neighbours(shared: &Shared, request: &[u8]) -> Result<api::NeighboursView, ErrorBody> {
    let q: api::Router = decode_request(api::op::NEIGHBOURS, request)?;
    let r = router("router", &q.router)?;
    let (t, _) = load_topology(shared).await?;
    let n = query(t.neighbours(r))?;
    Ok(api::NeighboursView {
        outgoing: n.outgoing.iter().map(ToString::to_string).collect(),
        incoming: n.incoming.iter().map(ToString::to_string).collect(),
    })
}

async fn unmonitored(shared: &Shared) -> Result<Vec<api::LinkView>, ErrorBody> {
    let (t, _) = load_topology(shared).await?;
    Ok(t.unmonitored_links().into_iter().map(link_view).collect())
}

async fn monitors(shared: &Shared) -> Result<Vec<api::MonitorView>, ErrorBody> {
    let monitors = shared.control.monitors().await?;
    let now = now_ms();
    Ok(monitors
        .into_values()
        .map(|m| monitor_view(m, now))
        .collect())
}

async fn status(shared: &Shared, request: &[u8]) -> Result<api::Statuses, ErrorBody> {
    let q: api::StatusQuery = decode_request(api::op::STATUS, request)?;
    let all = shared
        .control
        .status(&q.monitors, monitor_timeout(q.timeout_ms))
        .await?;
    let mut out = api::Statuses {
        monitors: Vec::new(),
        missing: Vec::new(),
    };
    for (monitor, reply) in all {
        match reply {
            Ok(s) => out.monitors.push(status_view(s)),
            Err(error) => out
                .missing
                .push(missing(control::Missing { monitor, error })),
        }
    }
    out.monitors.sort_by(|a, b| a.monitor.cmp(&b.monitor));
    Ok(out)
}

async fn deploy(ctx: &mut Ctx, request: &[u8]) -> Result<api::Deployed, ErrorBody> {
    let q: api::Deploy<Value> = decode_request(api::op::DEPLOY, request)?;
    let deployment = if q.deployment.is_empty() {
        ctx.deployed += 1;
        let id = format!(
            "{}-{}-{}-{}",
            ctx.app, q.analyzer, ctx.shared.manager, ctx.deployed
        );
        id.chars().take(bus_schema::MAX_TOKEN_LEN).collect()
    } else {
        q.deployment
    };
    let spec = DeploySpec {
        deployment,
        analyzer: q.analyzer,
        sha256: Some(q.sha256).filter(|s| !s.is_empty()),
        params: q.params,
        filter: filter(q.filter),
        targets: match q.targets {
            api::Targets::All => Targets::All,
            api::Targets::Monitors(m) => Targets::Monitors(m),
            api::Targets::Links(l) => Targets::Links(
                l.into_iter()
                    .map(|t| (t.monitor_address, t.link_id))
                    .collect(),
            ),
        },
        report_every_ms: q.report_every_ms,
    };
    Ok(deployed(ctx.shared.control.deploy(&spec).await?))
}

async fn configure(shared: &Shared, request: &[u8]) -> Result<api::Outcome, ErrorBody> {
    let q: api::Configure<Value> = decode_request(api::op::CONFIGURE, request)?;
    let c = shared
        .control
        .configure(&q.deployment, q.params, false)
        .await?;
    Ok(api::Outcome {
        done: c.done.into_iter().map(|(m, _)| m).collect(),
        failed: c.failed.into_iter().map(missing).collect(),
    })
}

/// As `configure` and `unload`: the app's manager is the requester, and
/// only a deployment it owns is upgraded (no `force`).
async fn upgrade(shared: &Shared, request: &[u8]) -> Result<api::Upgraded, ErrorBody> {
    let q: api::Upgrade<Value> = decode_request(api::op::UPGRADE, request)?;
    bus_schema::validate_token("deployment", &q.deployment).map_err(bad_token)?;
    bus_schema::validate_token("blob", &q.blob).map_err(bad_token)?;
    let u = shared
        .control
        .upgrade(&q.deployment, &q.blob, q.params, false)
        .await?;
    Ok(upgraded(q.deployment, u))
}

async fn collect(shared: &Shared, request: &[u8]) -> Result<api::Collected<Value>, ErrorBody> {
    let q: api::Collect = decode_request(api::op::COLLECT, request)?;
    let c = shared
        .control
        .collect(&q.deployment, monitor_timeout(q.timeout_ms))
        .await?;
    if q.archive {
        archive_of(shared)?
            .results(&q.deployment, &c.results)
            .await
            .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
    }
    Ok(collected(c))
}

async fn unload(ctx: &mut Ctx, request: &[u8]) -> Result<api::Collected<Value>, ErrorBody> {
    let q: api::DeploymentRef = decode_request(api::op::UNLOAD, request)?;
    let c = ctx.shared.control.unload(&q.deployment, false).await?;
    if let Some(s) = ctx.subscriptions.remove(&q.deployment) {
        s.abort();
    }
    Ok(collected(c))
}

async fn publish(ctx: &mut Ctx, request: &[u8]) -> Result<u64, ErrorBody> {
    let q: api::Publish<Value> = decode_request(api::op::PUBLISH, request)?;
    ctx.report_seq += 1;
    let shared = &ctx.shared;
    let report = Report {
        manager: shared.manager.clone(),
        app: ctx.app.clone(),
        seq: ctx.report_seq,
        at_unix_ms: now_ms(),
        kind: q.kind,
        body: q.body,
    };
    let id = format!(
        "{}:{}:{}:{}",
        shared.manager, ctx.app, report.at_unix_ms, report.seq
    );
    shared.publish_report(&report, &id).await;
    Ok(report.seq)
}

async fn archive(ctx: &mut Ctx, request: &[u8]) -> Result<api::Archived, ErrorBody> {
    let q: api::Archive<Value> = decode_request(api::op::ARCHIVE, request)?;
    bus_schema::validate_token("name", &q.name).map_err(bad_token)?;
    let path = archive_of(&ctx.shared)?
        .record(&ctx.app, &q.name, now_ms(), &q.body)
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
    Ok(api::Archived { paths: vec![path] })
}

fn set_timer(ctx: &mut Ctx, request: &[u8]) -> Result<api::Empty, ErrorBody> {
    let q: api::SetTimer = decode_request(api::op::SET_TIMER, request)?;
    if q.every_ms < 10 {
        return refuse(
            ErrorCode::BadRequest,
            format!("every_ms = {}: at least 10", q.every_ms),
        );
    }
    let timer = q.timer;
    let task = tokio::spawn(tick(ctx.inbox.clone(), q));
    if let Some(old) = ctx.timers.insert(timer, task) {
        old.abort();
    }
    Ok(api::Empty {})
}

/// A timer's ticks into the app's inbox: once, or every period.
async fn tick(inbox: mpsc::Sender<Msg>, q: api::SetTimer) {
    let period = Duration::from_millis(q.every_ms);
    if q.once {
        tokio::time::sleep(period).await;
        let _ = inbox.send(Msg::Timer(q.timer)).await;
        return;
    }
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        // A slow app skips ticks instead of piling them up.
        if let Err(mpsc::error::TrySendError::Closed(_)) = inbox.try_send(Msg::Timer(q.timer)) {
            return;
        }
    }
}

fn cancel_timer(ctx: &mut Ctx, request: &[u8]) -> Result<api::Empty, ErrorBody> {
    let q: api::TimerRef = decode_request(api::op::CANCEL_TIMER, request)?;
    if let Some(t) = ctx.timers.remove(&q.timer) {
        t.abort();
    }
    Ok(api::Empty {})
}

async fn subscribe(ctx: &mut Ctx, request: &[u8]) -> Result<api::Empty, ErrorBody> {
    let q: api::DeploymentRef = decode_request(api::op::SUBSCRIBE, request)?;
    bus_schema::validate_token("deployment", &q.deployment).map_err(bad_token)?;
    let control = ctx.shared.control.clone();
    let sub = control
        .client()
        .subscribe(subject::events("*", &q.deployment))
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
    let task = tokio::spawn(forward_events(
        sub,
        ctx.inbox.clone(),
        ctx.app.clone(),
        control,
    ));
    if let Some(old) = ctx.subscriptions.insert(q.deployment, task) {
        old.abort();
    }
    Ok(api::Empty {})
}

/// A deployment's events into the app's inbox, with each monitor's
/// address; dropped with a warning when the app is not keeping up.
async fn forward_events(
    mut sub: async_nats::Subscriber,
    inbox: mpsc::Sender<Msg>,
    app: String,
    control: Control,
) {
    let mut addresses: HashMap<String, String> = HashMap::new();
    while let Some(msg) = sub.next().await {
        let Ok(event) = bus_schema::decode::<Event>(&msg.payload) else {
            continue;
        };
        if !addresses.contains_key(&event.monitor)
            && let Ok(m) = control.monitors().await
        {
            addresses.extend(m.into_iter().map(|(id, r)| (id, r.address)));
        }
        let address = addresses.get(&event.monitor).cloned().unwrap_or_default();
        let Ok(bytes) = rmp_serde::to_vec_named(&event_view(event, address)) else {
            continue;
        };
        match inbox.try_send(Msg::Event(bytes)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(app = %app, "app is not keeping up: event dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
