//! tmctl's verbs on deployments, through [`Control`] as one identity:
//! deploy, unload, configure, collect, adopt, deployments, status.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::anyhow;
use bus_schema::{
    DeploymentRecord, ErrorBody, ErrorCode, Filter, ManagerRecord, MonitorStatus, PortRange,
    ResultWindow, Value,
};
use manager::archive::{Archive, to_json};
use manager::control::{Collected, Control, DeploySpec, Deployed, Targets, now_ms};
use serde_json::json;

use crate::{BAD_INPUT, Command, DeployArgs, Failure, NOT_FOUND, fail};

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
pub(crate) fn json_value(flag: &str, arg: &str) -> Result<Value, Failure> {
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

pub(crate) fn window_json(address: &str, w: &ResultWindow) -> serde_json::Value {
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
        Command::Deploy(args) => deploy(control, args, json).await,
        Command::Unload { deployment, force } => unload(control, &deployment, force, json).await,
        Command::Configure {
            deployment,
            params,
            force,
        } => configure(control, &deployment, &params, force, json).await,
        Command::Upgrade {
            deployment,
            blob,
            params,
            force,
        } => upgrade(control, &deployment, &blob, params.as_deref(), force, json).await,
        Command::Collect {
            deployment,
            timeout_ms,
            archive,
        } => collect(control, &deployment, timeout_ms, archive, json).await,
        Command::Adopt { deployment, force } => adopt(control, &deployment, force, json).await,
        Command::Deployments => deployments(control, json).await,
        Command::Status {
            monitors,
            timeout_ms,
        } => status(control, &monitors, timeout_ms, json).await,
        _ => unreachable!("dispatched in run()"),
    }
}

async fn deploy(control: &Control, args: DeployArgs, json: bool) -> Result<(), Failure> {
    let spec = deploy_spec(args)?;
    let d = control.deploy(&spec).await.map_err(refused)?;
    print_deployed(&d, json);
    unless_refused(&d.failed, || {
        format!("{} monitor(s) refused the deployment", d.failed.len())
    })
}

fn print_deployed(d: &Deployed, json: bool) {
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
        return;
    }
    println!(
        "deployed {} ({} {}) owned by {}",
        d.record.deployment, d.record.analyzer.name, d.record.analyzer.sha256, d.record.owner
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

async fn unload(
    control: &Control,
    deployment: &str,
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    let c = control.unload(deployment, force).await.map_err(refused)?;
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

async fn configure(
    control: &Control,
    deployment: &str,
    params: &str,
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    let params = json_value("--params", params)?;
    let c = control
        .configure(deployment, params, force)
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
    unless_refused(&c.failed, || {
        format!("{} monitor(s) refused the new params", c.failed.len())
    })
}

async fn upgrade(
    control: &Control,
    deployment: &str,
    blob: &str,
    params: Option<&str>,
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    let params = params.map(|p| json_value("--params", p)).transpose()?;
    let u = control
        .upgrade(deployment, blob, params, force)
        .await
        .map_err(refused)?;
    if json {
        println!(
            "{}",
            json!({"deployment": deployment,
                "analyzer": {"name": u.analyzer.name, "sha256": u.analyzer.sha256},
                "done": u.done.iter().map(|(m, r)| json!({"monitor": m,
                    "previous": {"name": r.previous.name, "sha256": r.previous.sha256},
                    "swap_us": r.swap_us})).collect::<Vec<_>>(),
                "failed": u.failed.iter().map(missing_json).collect::<Vec<_>>(),
                "skipped": u.skipped})
        );
    } else {
        for (m, r) in &u.done {
            println!(
                "{m}: upgraded from {} ({}) to {} ({}); packets held {} µs",
                r.previous.name, r.previous.sha256, r.analyzer.name, r.analyzer.sha256, r.swap_us
            );
        }
        for f in &u.failed {
            println!("{}: REFUSED: {}", f.monitor, f.error);
        }
        for m in &u.skipped {
            println!("{m}: not asked (stopped at the refusal)");
        }
    }
    unless_refused(&u.failed, || {
        format!(
            "{} refused the upgrade; {} monitor(s) run {blob}, {} the previous module",
            u.failed[0].monitor,
            u.done.len(),
            u.failed.len() + u.skipped.len()
        )
    })
}

async fn collect(
    control: &Control,
    deployment: &str,
    timeout_ms: u64,
    archive: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let c = control
        .collect(deployment, Duration::from_millis(timeout_ms))
        .await
        .map_err(refused)?;
    if let Some(location) = archive {
        let archive = Archive::open(&location).map_err(|e| fail(BAD_INPUT, e))?;
        let paths = archive
            .results(deployment, &c.results)
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

async fn adopt(
    control: &Control,
    deployment: &str,
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    let previous = control.adopt(deployment, force).await.map_err(refused)?;
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

async fn deployments(control: &Control, json: bool) -> Result<(), Failure> {
    let all = control.deployments().await.map_err(refused)?;
    let managers = control.managers().await.map_err(refused)?;
    if json {
        print_deployments_json(&all, &managers);
    } else {
        print_deployments(&all, &managers);
    }
    Ok(())
}

/// Whether a deployment's owner is a manager that is up.
fn owner_up(r: &DeploymentRecord, managers: &BTreeMap<String, ManagerRecord>) -> bool {
    managers.get(&r.owner).is_some_and(|m| m.is_up(now_ms()))
}

fn print_deployments_json(
    all: &BTreeMap<String, (DeploymentRecord, u64)>,
    managers: &BTreeMap<String, ManagerRecord>,
) {
    let v: Vec<_> = all
        .values()
        .map(|(r, rev)| {
            json!({"deployment": r.deployment, "analyzer": r.analyzer.name, "sha256": r.analyzer.sha256,
                "owner": r.owner, "owner_up": owner_up(r, managers),
                "desired": format!("{:?}", r.desired).to_lowercase(), "revision": rev,
                "params": to_json(&r.params),
                "targets": r.targets.iter().map(|t| json!({"monitor": t.monitor, "links": t.links})).collect::<Vec<_>>(),
                "created_unix_ms": r.created_unix_ms, "updated_unix_ms": r.updated_unix_ms})
        })
        .collect();
    println!("{}", serde_json::Value::Array(v));
}

fn print_deployments(
    all: &BTreeMap<String, (DeploymentRecord, u64)>,
    managers: &BTreeMap<String, ManagerRecord>,
) {
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
            if owner_up(r, managers) { "yes" } else { "no" },
            format!("{:?}", r.desired).to_lowercase(),
            rev,
            targets.join(" ")
        );
    }
}

async fn status(
    control: &Control,
    monitors: &[String],
    timeout_ms: u64,
    json: bool,
) -> Result<(), Failure> {
    let all = control
        .status(monitors, Duration::from_millis(timeout_ms))
        .await
        .map_err(refused)?;
    let mut failed = 0;
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|(id, s)| match s {
                Ok(s) => {
                    json!({"monitor": id, "status": serde_json::to_value(s).unwrap_or_default()})
                }
                Err(e) => {
                    json!({"monitor": id, "error": {"code": e.code.as_str(), "message": e.message}})
                }
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    }
    for (id, s) in &all {
        match s {
            Ok(s) if !json => print_status(s),
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

fn print_status(s: &MonitorStatus) {
    let because = |e: &Option<String>| e.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
    println!(
        "monitor {} at {} (version {}, up {} s)",
        s.monitor, s.address, s.version, s.uptime_s
    );
    for l in &s.links {
        let threads = if l.thread_packets.is_empty() {
            String::new()
        } else {
            let each: Vec<String> = l.thread_packets.iter().map(u64::to_string).collect();
            format!(" (capture threads: {})", each.join(" + "))
        };
        println!(
            "  link {} {}->{} {:?}: {} packets{threads}, {} bytes, {} kernel drops, {} interface drops{}",
            l.link.id,
            l.link.from_router,
            l.link.to_router,
            l.state,
            l.packets,
            l.bytes,
            l.kernel_drops,
            l.interface_drops,
            because(&l.last_error)
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
            because(&d.last_error)
        );
    }
}

/// Exit code 1 with `why` when any monitor refused; done otherwise.
fn unless_refused(
    failed: &[manager::control::Missing],
    why: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(fail(1, anyhow!(why())))
    }
}
