//! The manager's Prometheus metrics.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tm_manager_apps` | `state` | apps by state (`running`, `failed`, `stopped`) |
//! | `tm_manager_command_duration_seconds` | `command` | histogram of the manager's own commands (`apps.load`, …) |
//! | `tm_manager_monitor_request_duration_seconds` | `command` | histogram of round trips of commands sent to monitors (`load`, `collect`, …) |
//! | `tm_nats_reconnects_total` | | NATS reconnections |

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use wasm_host::metrics::{NatsConnects, encode_family};

use bus_schema::AppState;

use crate::apps::Apps;

/// Reads the apps' states at scrape time.
struct Figures(Apps);

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("manager figures")
    }
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps = self.0.list();
        let count = |state: AppState| apps.iter().filter(|a| a.state == state).count() as i64;
        encode_family(
            &mut encoder,
            "tm_manager_apps",
            "Management apps on this manager, by state",
            [
                ("running", AppState::Running),
                ("failed", AppState::Failed),
                ("stopped", AppState::Stopped),
            ]
            .map(|(name, state)| {
                (
                    vec![("state", name.to_owned())],
                    ConstGauge::new(count(state)),
                )
            }),
        )
    }
}

/// The manager's registry: app states, both command histograms and the NATS
/// client's reconnects (`connects`, refreshed before each scrape).
#[must_use]
pub fn registry(apps: &Apps, connects: NatsConnects) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures(apps.clone())));
    apps.commands().register(
        &mut registry,
        "tm_manager_command_duration_seconds",
        "Time to handle a manager command (apps.load, apps.unload, apps.list)",
    );
    apps.control().request_times().register(
        &mut registry,
        "tm_manager_monitor_request_duration_seconds",
        "Round trip of a command sent to a monitor (load, unload, collect, configure, status)",
    );
    registry.register_collector(Box::new(connects));
    registry
}
