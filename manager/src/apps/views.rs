//! The control plane's and the topology's answers as the mgmt-app ABI's
//! types (`tm-app-api`), and the ABI's filter as the bus's.

use bus_schema::Value;
use serde::Serialize;
use tm_app_api as api;

use crate::control;
use crate::topology;

pub(super) fn link_view(link: &topology::Link) -> api::LinkView {
    api::LinkView {
        from_router: link.from.to_string(),
        to_router: link.to.to_string(),
        taps: link
            .seen_by
            .iter()
            .map(|t| api::TapView {
                monitor_address: t.monitor.to_string(),
                link_id: t.link_id,
            })
            .collect(),
    }
}

pub(super) fn filter(f: api::Filter) -> bus_schema::Filter {
    let ports = |v: Vec<api::PortRange>| {
        v.into_iter()
            .map(|p| bus_schema::PortRange {
                from: p.from,
                to: p.to,
            })
            .collect()
    };
    bus_schema::Filter {
        src: f.src,
        dst: f.dst,
        src_ports: ports(f.src_ports),
        dst_ports: ports(f.dst_ports),
        protocols: f.protocols,
        bpf: f.bpf,
    }
}

/// A unit enum's serde name (`running`, `app_failed`, …).
pub(super) fn snake<T: Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(super) fn monitor_view(m: bus_schema::MonitorRecord, now_ms: u64) -> api::MonitorView {
    api::MonitorView {
        monitor: m.monitor,
        address: m.address,
        links: m
            .links
            .into_iter()
            .map(|l| api::MonitorLink {
                id: l.id,
                from_router: l.from_router,
                to_router: l.to_router,
            })
            .collect(),
        heartbeat_age_ms: now_ms.saturating_sub(m.heartbeat_unix_ms),
    }
}

pub(super) fn status_view(s: bus_schema::MonitorStatus) -> api::MonitorStatusView {
    api::MonitorStatusView {
        monitor: s.monitor,
        address: s.address,
        uptime_s: s.uptime_s,
        links: s
            .links
            .into_iter()
            .map(|l| api::LinkStatusView {
                id: l.link.id,
                state: snake(l.state),
                packets: l.packets,
                bytes: l.bytes,
                drops: l.kernel_drops + l.interface_drops,
            })
            .collect(),
        deployments: s
            .deployments
            .into_iter()
            .map(|d| api::DeploymentStatusView {
                deployment: d.deployment,
                analyzer: d.analyzer.name,
                owner: d.owner,
                state: snake(d.state),
                stats: api::Stats {
                    packets_in: d.stats.packets_in,
                    bytes_in: d.stats.bytes_in,
                    dropped: d.stats.dropped,
                },
                last_error: d.last_error,
            })
            .collect(),
    }
}

pub(super) fn missing(m: control::Missing) -> api::Missing {
    api::Missing {
        monitor: m.monitor,
        code: m.error.code.as_str().to_owned(),
        message: m.error.message,
    }
}

pub(super) fn deployed(d: control::Deployed) -> api::Deployed {
    api::Deployed {
        deployment: d.record.deployment,
        sha256: d.record.analyzer.sha256,
        placed: d
            .placed
            .into_iter()
            .map(|p| api::Placement {
                monitor: p.monitor,
                address: p.address,
                links: p.links,
            })
            .collect(),
        failed: d.failed.into_iter().map(missing).collect(),
    }
}

pub(super) fn module_ref(b: bus_schema::BlobRef) -> api::ModuleRef {
    api::ModuleRef {
        name: b.name,
        sha256: b.sha256,
    }
}

pub(super) fn upgraded(deployment: String, u: control::Upgraded) -> api::Upgraded {
    api::Upgraded {
        deployment,
        analyzer: module_ref(u.analyzer),
        done: u
            .done
            .into_iter()
            .map(|(monitor, r)| api::Swapped {
                monitor,
                previous: module_ref(r.previous),
                swap_us: r.swap_us,
            })
            .collect(),
        failed: u.failed.into_iter().map(missing).collect(),
        skipped: u.skipped,
    }
}

pub(super) fn collected(c: control::Collected) -> api::Collected<Value> {
    api::Collected {
        deployment: c.deployment,
        results: c
            .results
            .into_iter()
            .map(|r| api::MonitorResults {
                monitor: r.window.monitor,
                address: r.address,
                seq: r.window.seq,
                start_unix_ms: r.window.start_unix_ms,
                end_unix_ms: r.window.end_unix_ms,
                stats: api::Stats {
                    packets_in: r.window.stats.packets_in,
                    bytes_in: r.window.stats.bytes_in,
                    dropped: r.window.stats.dropped,
                },
                results: r.window.results,
            })
            .collect(),
        missing: c.missing.into_iter().map(missing).collect(),
    }
}

pub(super) fn event_view(event: bus_schema::Event, address: String) -> api::EventView<Value> {
    api::EventView {
        address,
        monitor: event.monitor,
        deployment: event.deployment,
        kind: snake(event.kind),
        message: event.message,
        at_unix_ms: event.at_unix_ms,
        data: event.data,
    }
}
