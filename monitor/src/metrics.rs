//! The monitor's Prometheus metrics: read at each scrape from the same
//! snapshot the `status` command answers with, so both always agree.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tm_monitor_link_packets_total` | `link` | packets captured |
//! | `tm_monitor_link_bytes_total` | `link` | their wire bytes |
//! | `tm_monitor_link_parse_errors_total` | `link` | packets that did not parse |
//! | `tm_monitor_link_kernel_drops_total` | `link` | dropped by the kernel (pcap_stats) |
//! | `tm_monitor_link_interface_drops_total` | `link` | dropped by the interface (pcap_stats) |
//! | `tm_monitor_link_up` | `link` | 1 while its capture runs |
//! | `tm_monitor_link_state` | `link`, `state` | 1 for the link's state (`running`, `finished`, `failed`), 0 for the others |
//! | `tm_monitor_deployments` | | deployments loaded |
//! | `tm_monitor_deployment_packets_total` | `deployment`, `analyzer` | packets the guest received |
//! | `tm_monitor_deployment_bytes_total` | `deployment`, `analyzer` | their wire bytes |
//! | `tm_monitor_deployment_queue_drops_total` | `deployment`, `analyzer` | packets its full queue dropped |
//! | `tm_monitor_deployment_guest_calls_total` | `deployment`, `analyzer` | calls into the guest |
//! | `tm_monitor_deployment_guest_seconds_total` | `deployment`, `analyzer` | time inside the guest |
//! | `tm_monitor_deployment_shed_windows_total` | `deployment`, `analyzer` | periodic windows the full outbox shed |
//! | `tm_monitor_outbox_queued` | | messages waiting for the bus |
//! | `tm_monitor_outbox_queued_bytes` | | their bytes |
//! | `tm_monitor_outbox_limit_bytes` | | the bound on those bytes |
//! | `tm_monitor_outbox_published_total` | | messages the bus took |
//! | `tm_monitor_outbox_shed_windows_total` | | periodic windows shed (outbox full) |
//! | `tm_monitor_outbox_shed_events_total` | | alerts shed (outbox full) |
//! | `tm_monitor_outbox_too_large_total` | | messages over the bus's max payload |
//! | `tm_monitor_outbox_refused` | | 1 while the bus refuses messages (status says why) |
//! | `tm_monitor_command_duration_seconds` | `command` | histogram of command handling |
//! | `tm_nats_reconnects_total` | | NATS reconnections |

use std::sync::Arc;

use bus_schema::LinkState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use wasm_host::metrics::{NatsConnects, encode_family};

use crate::service::Monitor;

/// Reads the monitor's snapshot at scrape time.
struct Figures(Arc<Monitor>);

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("monitor figures")
    }
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(st) = self.0.snapshot(None) else {
            return Ok(());
        };
        let link = |id: u32| vec![("link", id.to_string())];
        type LinkFigure = (
            &'static str,
            &'static str,
            fn(&bus_schema::LinkStatus) -> u64,
        );
        let link_counters: [LinkFigure; 5] = [
            (
                "tm_monitor_link_packets",
                "Packets captured on the link",
                |l| l.packets,
            ),
            (
                "tm_monitor_link_bytes",
                "Wire bytes of the packets captured",
                |l| l.bytes,
            ),
            (
                "tm_monitor_link_parse_errors",
                "Captured packets that did not parse",
                |l| l.parse_errors,
            ),
            (
                "tm_monitor_link_kernel_drops",
                "Packets the kernel dropped (pcap_stats ps_drop)",
                |l| l.kernel_drops,
            ),
            (
                "tm_monitor_link_interface_drops",
                "Packets the interface dropped (pcap_stats ps_ifdrop)",
                |l| l.interface_drops,
            ),
        ];
        for (name, help, get) in link_counters {
            encode_family(
                &mut encoder,
                name,
                help,
                st.links
                    .iter()
                    .map(|l| (link(l.link.id), ConstCounter::new(get(l)))),
            )?;
        }
        encode_family(
            &mut encoder,
            "tm_monitor_link_up",
            "1 while the link's capture runs, 0 once it finished or failed",
            st.links.iter().map(|l| {
                (
                    link(l.link.id),
                    ConstGauge::new(i64::from(l.state == LinkState::Running)),
                )
            }),
        )?;
        let states = [
            (LinkState::Running, "running"),
            (LinkState::Finished, "finished"),
            (LinkState::Failed, "failed"),
        ];
        encode_family(
            &mut encoder,
            "tm_monitor_link_state",
            "1 for the link's capture state, 0 for the others",
            st.links.iter().flat_map(|l| {
                states.iter().map(move |(state, name)| {
                    (
                        vec![
                            ("link", l.link.id.to_string()),
                            ("state", (*name).to_owned()),
                        ],
                        ConstGauge::new(i64::from(l.state == *state)),
                    )
                })
            }),
        )?;
        encode_family(
            &mut encoder,
            "tm_monitor_deployments",
            "Deployments loaded on the monitor",
            [(vec![], ConstGauge::new(st.deployments.len() as i64))],
        )?;
        let dep = |d: &bus_schema::DeploymentStatus| {
            vec![
                ("deployment", d.deployment.clone()),
                ("analyzer", d.analyzer.name.clone()),
            ]
        };
        type DeploymentFigure = (
            &'static str,
            &'static str,
            fn(&bus_schema::DeploymentStats) -> u64,
        );
        let dep_counters: [DeploymentFigure; 5] = [
            (
                "tm_monitor_deployment_packets",
                "Packets that passed the deployment's filter and reached its guest",
                |s| s.packets_in,
            ),
            (
                "tm_monitor_deployment_bytes",
                "Wire bytes of those packets",
                |s| s.bytes_in,
            ),
            (
                "tm_monitor_deployment_queue_drops",
                "Packets that passed the filter but found the deployment's queue full",
                |s| s.dropped,
            ),
            (
                "tm_monitor_deployment_guest_calls",
                "Calls into the guest",
                |s| s.guest_calls,
            ),
            (
                "tm_monitor_deployment_shed_windows",
                "Periodic windows of the deployment the full outbox shed",
                |s| s.shed_windows,
            ),
        ];
        for (name, help, get) in dep_counters {
            encode_family(
                &mut encoder,
                name,
                help,
                st.deployments
                    .iter()
                    .map(|d| (dep(d), ConstCounter::new(get(&d.stats)))),
            )?;
        }
        encode_family(
            &mut encoder,
            "tm_monitor_deployment_guest_seconds",
            "Time spent inside the guest",
            st.deployments.iter().map(|d| {
                (
                    dep(d),
                    ConstCounter::new(d.stats.guest_time_us as f64 / 1e6),
                )
            }),
        )?;
        let o = &st.outbox;
        let gauges: [(&str, &str, u64); 4] = [
            (
                "tm_monitor_outbox_queued",
                "Messages waiting for the bus",
                o.queued,
            ),
            (
                "tm_monitor_outbox_queued_bytes",
                "Bytes of the messages waiting for the bus",
                o.queued_bytes,
            ),
            (
                "tm_monitor_outbox_limit_bytes",
                "The bound on the outbox's bytes (limits.outbox_mb)",
                o.limit_bytes,
            ),
            (
                "tm_monitor_outbox_refused",
                "1 while the bus refuses messages (status says why)",
                u64::from(o.last_error.is_some()),
            ),
        ];
        for (name, help, v) in gauges {
            encode_family(
                &mut encoder,
                name,
                help,
                [(vec![], ConstGauge::new(v as i64))],
            )?;
        }
        let counters: [(&str, &str, u64); 4] = [
            (
                "tm_monitor_outbox_published",
                "Messages the bus took",
                o.published,
            ),
            (
                "tm_monitor_outbox_shed_windows",
                "Periodic windows shed because the outbox was full",
                o.shed_windows,
            ),
            (
                "tm_monitor_outbox_shed_events",
                "Alerts shed because the outbox was full",
                o.shed_events,
            ),
            (
                "tm_monitor_outbox_too_large",
                "Messages larger than the bus's max payload, not published",
                o.too_large,
            ),
        ];
        for (name, help, v) in counters {
            encode_family(&mut encoder, name, help, [(vec![], ConstCounter::new(v))])?;
        }
        Ok(())
    }
}

/// The monitor's registry: its figures, its command histogram and the NATS
/// client's reconnects (`connects`, refreshed before each scrape).
#[must_use]
pub fn registry(monitor: &Arc<Monitor>, connects: NatsConnects) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures(monitor.clone())));
    monitor.commands().register(
        &mut registry,
        "tm_monitor_command_duration_seconds",
        "Time to handle a command (load, unload, collect, configure, status)",
    );
    registry.register_collector(Box::new(connects));
    registry
}
