//! tmctl's verbs on deployments, apps and the result streams.

use std::time::Duration;

use anyhow::anyhow;
use async_nats::jetstream::{self, consumer};
use bus_schema::store::{self, BlobKind};
use bus_schema::{
    AppList, AppListRequest, AppLoadRequest, AppSource, AppStatus, AppUnloadRequest, BlobRef,
    ErrorBody, ErrorCode, Event, Filter, PortRange, Report, ResultWindow, Value, subject,
};
use futures::StreamExt;
use manager::archive::{Archive, to_json};
use manager::control::{Collected, Control, DeploySpec, Targets, now_ms};
use serde_json::json;

use crate::{AppsCommand, BAD_INPUT, Command, DeployArgs, Failure, NOT_FOUND, Watched, fail};

/// The exit code for a refusal: 3 not found, 2 bad input, 1 the rest.
pub(crate) fn refused(e: ErrorBody) -> Failure {
    let code = match e.code {
        ErrorCode::UnknownDeployment | ErrorCode::UnknownApp | ErrorCode::BlobNotFound => NOT_FOUND,
        ErrorCode::BadRequest
        | ErrorCode::BadParams
        | ErrorCode::BadFilter
        | ErrorCode::UnknownLink => BAD_INPUT,
        _ => 1,
    };
    fail(code, anyhow!("{e}"))
}

/// JSON given inline, or as `@FILE` (for params too long for a command line).
fn json_value(flag: &str, arg: &str) -> Result<Value, Failure> {
    let (text, shown) = match arg.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| fail(BAD_INPUT, anyhow!("{flag} @{path}: cannot read: {e}")))?,
            format!("@{path}"),
        ),
        None => {
            let mut shown: String = arg.chars().take(80).collect();
            if shown.len() < arg.len() {
                shown.push('…');
            }
            (arg.to_owned(), format!("{shown:?}"))
        }
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| fail(BAD_INPUT, anyhow!("{flag} {shown}: not JSON: {e}")))?;
    let bytes = rmp_serde::to_vec_named(&v).map_err(|e| fail(BAD_INPUT, anyhow!("{flag}: {e}")))?;
    rmp_serde::from_slice(&bytes).map_err(|e| fail(BAD_INPUT, anyhow!("{flag}: {e}")))
}

fn ports(flag: &str, specs: &[String]) -> Result<Vec<PortRange>, Failure> {
    specs
        .iter()
        .map(|spec| {
            let bad = || {
                fail(
                    BAD_INPUT,
                    anyhow!("{flag} {spec:?}: expected a port N or a range N-M"),
                )
            };
            let (from, to) = match spec.split_once('-') {
                Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
                None => {
                    let p = spec.parse().map_err(|_| bad())?;
                    (p, p)
                }
            };
            if from > to {
                return Err(bad());
            }
            Ok(PortRange { from, to })
        })
        .collect()
}

fn deploy_spec(a: DeployArgs) -> Result<DeploySpec, Failure> {
    let targets = if !a.links.is_empty() {
        let mut links = Vec::new();
        for l in &a.links {
            let bad = || {
                fail(
                    BAD_INPUT,
                    anyhow!("--link {l:?}: expected MONITOR_ADDRESS:LINK_ID"),
                )
            };
            let (addr, id) = l.rsplit_once(':').ok_or_else(bad)?;
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            if addr.parse::<std::net::IpAddr>().is_err() {
                return Err(fail(
                    BAD_INPUT,
                    anyhow!("--link {l:?}: {addr:?} is not an IP address"),
                ));
            }
            links.push((addr.to_owned(), id.parse().map_err(|_| bad())?));
        }
        Targets::Links(links)
    } else if !a.monitors.is_empty() {
        Targets::Monitors(a.monitors)
    } else {
        Targets::All
    };
    Ok(DeploySpec {
        deployment: a.id,
        analyzer: a.analyzer,
        sha256: a.sha256,
        params: match &a.params {
            Some(p) => json_value("--params", p)?,
            None => Value::Nil,
        },
        filter: Filter {
            src: a.src,
            dst: a.dst,
            src_ports: ports("--sport", &a.sport)?,
            dst_ports: ports("--dport", &a.dport)?,
            protocols: a.proto,
            bpf: a.bpf,
        },
        targets,
        report_every_ms: a.report_every_ms,
    })
}

fn missing_json(m: &manager::control::Missing) -> serde_json::Value {
    json!({"monitor": m.monitor, "code": m.error.code.as_str(), "message": m.error.message})
}

fn print_missing(missing: &[manager::control::Missing]) {
    for m in missing {
        eprintln!("tmctl: monitor {} did not answer: {}", m.monitor, m.error);
    }
}

fn window_json(address: &str, w: &ResultWindow) -> serde_json::Value {
    json!({
        "monitor": w.monitor, "address": address, "deployment": w.deployment,
        "analyzer": w.analyzer, "seq": w.seq, "last": w.last,
        "start_unix_ms": w.start_unix_ms, "end_unix_ms": w.end_unix_ms,
        "stats": {"packets_in": w.stats.packets_in, "bytes_in": w.stats.bytes_in,
                  "dropped": w.stats.dropped, "guest_calls": w.stats.guest_calls,
                  "guest_time_us": w.stats.guest_time_us},
        "results": to_json(&w.results),
    })
}

fn print_collected(c: &Collected, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "deployment": c.deployment,
                "results": c.results.iter().map(|r| window_json(&r.address, &r.window)).collect::<Vec<_>>(),
                "missing": c.missing.iter().map(missing_json).collect::<Vec<_>>(),
            })
        );
        return;
    }
    println!(
        "{:<24} {:<16} {:>5} {:>12} {:>14} {:>9}",
        "MONITOR", "ADDRESS", "SEQ", "PACKETS_IN", "BYTES_IN", "DROPPED"
    );
    for r in &c.results {
        let w = &r.window;
        println!(
            "{:<24} {:<16} {:>5} {:>12} {:>14} {:>9}",
            w.monitor, r.address, w.seq, w.stats.packets_in, w.stats.bytes_in, w.stats.dropped
        );
    }
    for r in &c.results {
        println!(
            "\n{} results:\n{}",
            r.window.monitor,
            serde_json::to_string_pretty(&to_json(&r.window.results)).unwrap_or_default()
        );
    }
    for m in &c.missing {
        println!("{:<24} MISSING: {}", m.monitor, m.error);
    }
}

/// Verbs that act as an identity through [`Control`].
pub(crate) async fn run(control: &Control, command: Command, json: bool) -> Result<(), Failure> {
    match command {
        Command::Deploy(args) => {
            let spec = deploy_spec(args)?;
            let d = control.deploy(&spec).await.map_err(refused)?;
            if json {
                println!(
                    "{}",
                    json!({
                        "deployment": d.record.deployment, "analyzer": d.record.analyzer.name,
                        "sha256": d.record.analyzer.sha256, "owner": d.record.owner, "revision": d.revision,
                        "placed": d.placed.iter().map(|p| json!({
                            "monitor": p.monitor, "address": p.address, "links": p.links,
                            "not_capturing": p.not_capturing.iter().map(|i| json!({"link": i.link, "state": i.state, "error": i.error})).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                        "failed": d.failed.iter().map(missing_json).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "deployed {} ({} {}) owned by {}",
                    d.record.deployment,
                    d.record.analyzer.name,
                    d.record.analyzer.sha256,
                    d.record.owner
                );
                println!("{:<24} {:<16} LINKS", "MONITOR", "ADDRESS");
                for p in &d.placed {
                    let links: Vec<String> = p.links.iter().map(ToString::to_string).collect();
                    println!("{:<24} {:<16} {}", p.monitor, p.address, links.join(","));
                    for idle in &p.not_capturing {
                        let why = idle.error.as_deref().unwrap_or("its replay ended");
                        let state = if idle.state == bus_schema::LinkState::Failed {
                            "failed"
                        } else {
                            "finished"
                        };
                        println!(
                            "{:<24} link {} is not capturing ({state}): {why}",
                            "", idle.link
                        );
                    }
                }
                for f in &d.failed {
                    println!("{:<24} FAILED: {}", f.monitor, f.error);
                }
            }
            if d.failed.is_empty() {
                Ok(())
            } else {
                Err(fail(
                    1,
                    anyhow!("{} monitor(s) refused the deployment", d.failed.len()),
                ))
            }
        }
        Command::Unload { deployment, force } => {
            let c = control.unload(&deployment, force).await.map_err(refused)?;
            print_collected(&c, json);
            if c.missing.is_empty() {
                Ok(())
            } else {
                print_missing(&c.missing);
                Err(fail(
                    1,
                    anyhow!(
                        "{} monitor(s) did not unload {deployment}; it stays recorded as unloaded",
                        c.missing.len()
                    ),
                ))
            }
        }
        Command::Configure {
            deployment,
            params,
            force,
        } => {
            let params = json_value("--params", &params)?;
            let c = control
                .configure(&deployment, params, force)
                .await
                .map_err(refused)?;
            if json {
                println!(
                    "{}",
                    json!({"deployment": deployment,
                        "done": c.done.iter().map(|(m, r)| json!({"monitor": m, "config_revision": r})).collect::<Vec<_>>(),
                        "failed": c.failed.iter().map(missing_json).collect::<Vec<_>>()})
                );
            } else {
                for (m, r) in &c.done {
                    println!("{m}: configured (revision {r})");
                }
                for f in &c.failed {
                    println!("{}: FAILED: {}", f.monitor, f.error);
                }
            }
            if c.failed.is_empty() {
                Ok(())
            } else {
                Err(fail(
                    1,
                    anyhow!("{} monitor(s) refused the new params", c.failed.len()),
                ))
            }
        }
        Command::Collect {
            deployment,
            timeout_ms,
            archive,
        } => {
            let c = control
                .collect(&deployment, Duration::from_millis(timeout_ms))
                .await
                .map_err(refused)?;
            if let Some(location) = archive {
                let archive = Archive::open(&location).map_err(|e| fail(BAD_INPUT, e))?;
                let paths = archive
                    .results(&deployment, &c.results)
                    .await
                    .map_err(|e| fail(1, e))?;
                for p in paths {
                    eprintln!("tmctl: archived {location}/{p}");
                }
            }
            print_collected(&c, json);
            if c.missing.is_empty() {
                Ok(())
            } else {
                Err(fail(
                    1,
                    anyhow!(
                        "{} monitor(s) did not answer within {timeout_ms} ms",
                        c.missing.len()
                    ),
                ))
            }
        }
        Command::Adopt { deployment, force } => {
            let previous = control.adopt(&deployment, force).await.map_err(refused)?;
            if json {
                println!(
                    "{}",
                    json!({"deployment": deployment, "owner": control.id(), "previous_owner": previous})
                );
            } else {
                println!(
                    "{deployment}: now owned by {} (was {previous})",
                    control.id()
                );
            }
            Ok(())
        }
        Command::Deployments => {
            let all = control.deployments().await.map_err(refused)?;
            let managers = control.managers().await.map_err(refused)?;
            if json {
                let v: Vec<_> = all
                    .values()
                    .map(|(r, rev)| {
                        json!({"deployment": r.deployment, "analyzer": r.analyzer.name, "sha256": r.analyzer.sha256,
                            "owner": r.owner, "owner_up": managers.get(&r.owner).is_some_and(|m| m.is_up(now_ms())),
                            "desired": format!("{:?}", r.desired).to_lowercase(), "revision": rev,
                            "params": to_json(&r.params),
                            "targets": r.targets.iter().map(|t| json!({"monitor": t.monitor, "links": t.links})).collect::<Vec<_>>(),
                            "created_unix_ms": r.created_unix_ms, "updated_unix_ms": r.updated_unix_ms})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
                return Ok(());
            }
            println!(
                "{:<32} {:<16} {:<16} {:<8} {:<9} {:>4}  TARGETS",
                "DEPLOYMENT", "ANALYZER", "OWNER", "OWNER_UP", "DESIRED", "REV"
            );
            for (r, rev) in all.values() {
                let targets: Vec<String> = r
                    .targets
                    .iter()
                    .map(|t| {
                        if t.links.is_empty() {
                            t.monitor.clone()
                        } else {
                            let l: Vec<String> = t.links.iter().map(ToString::to_string).collect();
                            format!("{}:{}", t.monitor, l.join(","))
                        }
                    })
                    .collect();
                println!(
                    "{:<32} {:<16} {:<16} {:<8} {:<9} {:>4}  {}",
                    r.deployment,
                    r.analyzer.name,
                    r.owner,
                    if managers.get(&r.owner).is_some_and(|m| m.is_up(now_ms())) {
                        "yes"
                    } else {
                        "no"
                    },
                    format!("{:?}", r.desired).to_lowercase(),
                    rev,
                    targets.join(" ")
                );
            }
            Ok(())
        }
        Command::Status {
            monitors,
            timeout_ms,
        } => {
            let all = control
                .status(&monitors, Duration::from_millis(timeout_ms))
                .await
                .map_err(refused)?;
            let mut failed = 0;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(id, s)| match s {
                        Ok(s) => json!({"monitor": id, "status": serde_json::to_value(s).unwrap_or_default()}),
                        Err(e) => json!({"monitor": id, "error": {"code": e.code.as_str(), "message": e.message}}),
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            }
            for (id, s) in &all {
                match s {
                    Ok(s) if !json => {
                        println!(
                            "monitor {} at {} (version {}, up {} s)",
                            s.monitor, s.address, s.version, s.uptime_s
                        );
                        for l in &s.links {
                            println!(
                                "  link {} {}->{} {:?}: {} packets, {} bytes, {} kernel drops{}",
                                l.link.id,
                                l.link.from_router,
                                l.link.to_router,
                                l.state,
                                l.packets,
                                l.bytes,
                                l.kernel_drops,
                                l.last_error
                                    .as_deref()
                                    .map(|e| format!(" ({e})"))
                                    .unwrap_or_default()
                            );
                        }
                        for d in &s.deployments {
                            println!(
                                "  deployment {} ({}) owner {} {:?}: {} packets in, {} dropped{}",
                                d.deployment,
                                d.analyzer.name,
                                d.owner,
                                d.state,
                                d.stats.packets_in,
                                d.stats.dropped,
                                d.last_error
                                    .as_deref()
                                    .map(|e| format!(" ({e})"))
                                    .unwrap_or_default()
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed += 1;
                        eprintln!("tmctl: monitor {id}: {e}");
                    }
                }
            }
            if monitors.is_empty() && all.is_empty() {
                eprintln!("tmctl: no monitor is up");
            }
            if failed == 0 {
                Ok(())
            } else if failed == all.len()
                && all
                    .iter()
                    .all(|(_, s)| matches!(s, Err(e) if e.code == ErrorCode::Unavailable))
            {
                Err(fail(NOT_FOUND, anyhow!("no such monitor answers")))
            } else {
                Err(fail(1, anyhow!("{failed} monitor(s) did not answer")))
            }
        }
        _ => unreachable!("dispatched in run()"),
    }
}

async fn request<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    q: &Q,
    timeout: Duration,
) -> Result<R, ErrorBody> {
    let payload =
        bus_schema::encode(q).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
    // The request's own timeout: the client's default (10 s) is shorter
    // than an app start that deploys to many monitors may take.
    let request = async_nats::client::Request::new()
        .payload(payload.into())
        .timeout(Some(timeout));
    let msg = match client.send_request(subject.clone(), request).await {
        Ok(m) => m,
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
            return Err(ErrorBody::new(
                ErrorCode::Timeout,
                format!("no reply on {subject} within {} ms", timeout.as_millis()),
            ));
        }
        Err(e) => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownApp,
                format!("nobody answers on {subject}: is the manager up? ({e})"),
            ));
        }
    };
    bus_schema::decode::<bus_schema::Reply<R>>(&msg.payload)
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?
        .into_result()
}

fn print_apps(list: &[AppStatus], json: bool) {
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|a| {
                json!({"app": a.app, "manager": a.manager, "sha256": a.sha256,
                    "state": format!("{:?}", a.state).to_lowercase(), "started_unix_ms": a.started_unix_ms,
                    "source": match &a.source { AppSource::File { path } => json!({"file": path}),
                                                AppSource::Object(b) => json!({"blob": b.name}) },
                    "last_error": a.last_error})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:<20} {:<16} {:<8} {:>8}  {:<16}  LAST_ERROR",
        "APP", "MANAGER", "STATE", "UP_S", "SHA256"
    );
    for a in list {
        println!(
            "{:<20} {:<16} {:<8} {:>8}  {:<16}  {}",
            a.app,
            a.manager,
            format!("{:?}", a.state).to_lowercase(),
            now_ms().saturating_sub(a.started_unix_ms) / 1000,
            &a.sha256[..a.sha256.len().min(16)],
            a.last_error.as_deref().unwrap_or("")
        );
    }
}

/// `tmctl apps …`
pub(crate) async fn apps(
    client: &async_nats::Client,
    js: &jetstream::Context,
    command: AppsCommand,
    json: bool,
) -> Result<(), Failure> {
    const APP_TIMEOUT: Duration = Duration::from_secs(60);
    match command {
        AppsCommand::Put(put) => crate::put_blob(js, BlobKind::MgmtApp, put, json).await,
        AppsCommand::Load {
            app,
            manager,
            file,
            blob,
            sha256,
            params,
        } => {
            let source = match (file, blob) {
                (Some(f), _) => AppSource::File {
                    path: std::fs::canonicalize(&f)
                        .map_err(|e| fail(BAD_INPUT, anyhow!("--file {}: {e}", f.display())))?
                        .to_string_lossy()
                        .into_owned(),
                },
                (None, Some(b)) => AppSource::Object(BlobRef {
                    name: b,
                    sha256: sha256.unwrap_or_default(),
                }),
                (None, None) => return Err(fail(BAD_INPUT, anyhow!("give --file or --blob"))),
            };
            let params = match params {
                Some(p) => json_value("--params", &p)?,
                None => Value::Nil,
            };
            let status: AppStatus = request(
                client,
                subject::manager_apps_load(&manager),
                &AppLoadRequest {
                    app,
                    source,
                    params,
                },
                APP_TIMEOUT,
            )
            .await
            .map_err(refused)?;
            print_apps(&[status], json);
            Ok(())
        }
        AppsCommand::Unload { app, manager } => {
            let status: AppStatus = request(
                client,
                subject::manager_apps_unload(&manager),
                &AppUnloadRequest { app },
                APP_TIMEOUT,
            )
            .await
            .map_err(refused)?;
            print_apps(&[status], json);
            Ok(())
        }
        AppsCommand::List { manager } => {
            let managers = match manager {
                Some(m) => vec![m],
                None => {
                    let kv = bus_schema::nats::open_kv(js, store::MANAGERS_BUCKET, 1)
                        .await
                        .map_err(|e| fail(1, e))?;
                    let mut keys = kv.keys().await.map_err(|e| fail(1, e))?;
                    let mut ids = Vec::new();
                    while let Some(k) = keys.next().await {
                        ids.push(k.map_err(|e| fail(1, e))?);
                    }
                    ids.sort();
                    ids
                }
            };
            let mut all = Vec::new();
            for m in &managers {
                let list: AppList = request(
                    client,
                    subject::manager_apps_list(m),
                    &AppListRequest {},
                    Duration::from_secs(5),
                )
                .await
                .map_err(refused)?;
                all.extend(list.apps);
            }
            print_apps(&all, json);
            if managers.is_empty() {
                eprintln!("tmctl: no manager is up");
            }
            Ok(())
        }
    }
}

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
