//! Guest SDK for management apps.
//!
//! Implement [`App`] and call [`export_app!`] once; the macro generates every
//! ABI v1 export (see `tm-app-api`). The free functions of this crate are the
//! host API: topology queries, monitors, deploy / configure / upgrade /
//! collect / unload analyzers, reports, archive, timers and event
//! subscriptions.
//! [`rounds`] runs the usual deploy / collect-and-report / unload cycle.
//!
//! ```ignore
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default)]
//! struct Params { every_ms: u64 }
//!
//! struct Hello;
//!
//! impl tm_app_sdk::App for Hello {
//!     type Params = Params;
//!     fn start(p: Params) -> Result<Self, String> {
//!         tm_app_sdk::set_timer(1, p.every_ms.max(100)).map_err(|e| e.to_string())?;
//!         Ok(Hello)
//!     }
//!     fn on_timer(&mut self, _timer: u32, _now_ns: u64) -> Result<(), String> {
//!         let monitors = tm_app_sdk::monitors().map_err(|e| e.to_string())?;
//!         tm_app_sdk::log(tm_app_sdk::Level::Info, &format!("{} monitors", monitors.len()));
//!         Ok(())
//!     }
//! }
//! tm_app_sdk::export_app!(Hello);
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod rounds;

pub use serde;
pub use tm_app_api as api;
use tm_app_api::{op, Empty, Reply, Status};
pub use tm_app_api::{
    CallError, Collect, Collected, Configure, Deploy, Deployed, DeploymentRef, EventView, Filter,
    LinkView, Missing, ModuleRef, MonitorLink, MonitorResults, MonitorView, NeighboursView,
    Outcome, Placement, PortRange, Stats, Swapped, TapView, Targets, TopologyView, Upgrade,
    Upgraded,
};
pub use tm_guest_rt::rt::{decode_params, Level};

/// A management app: started with params, driven by timers and events,
/// stopped when the manager unloads it.
pub trait App: Sized {
    /// Parameters for `start`. Absent params decode as an empty map, so
    /// `#[serde(default)]` gives every field a default.
    type Params: DeserializeOwned;

    /// S1: the app starts; an `Err` (naming the bad parameter) refuses the load.
    fn start(params: Self::Params) -> Result<Self, String>;
    /// A timer set with [`set_timer`] or [`set_timeout`] fired.
    fn on_timer(&mut self, _timer: u32, _now_ns: u64) -> Result<(), String> {
        Ok(())
    }
    /// An event of a deployment the app [`subscribe`]d to: an
    /// [`EventView`] as MessagePack; decode it with [`decode`] into
    /// `EventView<YourAlert>`.
    fn on_event(&mut self, _event: &[u8]) -> Result<(), String> {
        Ok(())
    }
    /// S8: the manager unloads the app; unload what it deployed here.
    fn stop(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Decodes MessagePack (field names) into `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("cannot decode: {}", e))
}

/// Encodes `T` as MessagePack with field names.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| format!("cannot encode: {}", e))
}

/// Host imports beyond `log` and `now` (`tm-guest-rt` has those).
#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "tm")]
    extern "C" {
        pub fn call(op_ptr: *const u8, op_len: u32, req_ptr: *const u8, req_len: u32) -> u32;
        pub fn reply(ptr: *mut u8) -> u32;
    }
}

/// Outside WebAssembly (unit tests of an app's logic) host calls go to a
/// handler the test installs; without one they fail with `unavailable`.
#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    use std::cell::RefCell;

    type Handler = Box<dyn FnMut(&str, &[u8]) -> Vec<u8>>;

    thread_local! {
        static HANDLER: RefCell<Option<Handler>> = RefCell::new(None);
    }

    /// Installs `handler(op, request) -> reply envelope bytes` for this thread.
    pub fn set_host(handler: impl FnMut(&str, &[u8]) -> Vec<u8> + 'static) {
        HANDLER.with(|h| *h.borrow_mut() = Some(Box::new(handler)));
    }

    pub(crate) fn call(op: &str, request: &[u8]) -> Option<Vec<u8>> {
        HANDLER.with(|h| h.borrow_mut().as_mut().map(|f| f(op, request)))
    }
}

/// Writes a line to the manager's log, tagged with the app.
pub fn log(level: Level, message: &str) {
    tm_guest_rt::rt::log(level, message)
}

/// The host's clock, Unix ns (outside WebAssembly, the system's).
pub fn now_ns() -> u64 {
    tm_guest_rt::rt::now_ns().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

fn local_error(code: &str, message: String) -> CallError {
    CallError {
        code: code.into(),
        message,
    }
}

/// Runs host operation `op` (see `tm_app_api::op`) with `request`.
pub fn call<Q: Serialize, R: DeserializeOwned>(op: &str, request: &Q) -> Result<R, CallError> {
    let req = encode(request).map_err(|e| local_error("bad_request", e))?;
    #[cfg(target_arch = "wasm32")]
    let bytes = unsafe {
        let len = imports::call(op.as_ptr(), op.len() as u32, req.as_ptr(), req.len() as u32);
        let mut buf = vec![0u8; len as usize];
        let copied = imports::reply(buf.as_mut_ptr());
        buf.truncate(copied as usize);
        buf
    };
    #[cfg(not(target_arch = "wasm32"))]
    let bytes = native::call(op, &req).ok_or_else(|| {
        local_error(
            "unavailable",
            "no host: not running in tm-manager".to_string(),
        )
    })?;
    match decode::<Reply<R>>(&bytes) {
        Ok(Reply::Ok(r)) => Ok(r),
        Ok(Reply::Err(e)) => Err(e),
        Err(e) => Err(local_error("internal", format!("reply to {}: {}", op, e))),
    }
}

/// The whole topology.
pub fn topology() -> Result<TopologyView, CallError> {
    call(op::TOPOLOGY, &Empty {})
}

/// Routers on the shortest path from `from` to `to`, both included.
pub fn shortest_path(from: &str, to: &str) -> Result<Vec<String>, CallError> {
    call(
        op::SHORTEST_PATH,
        &api::RouterPair {
            from: from.into(),
            to: to.into(),
        },
    )
}

/// The directed links a flow from router `from` to router `to` crosses.
pub fn flow_path(from: &str, to: &str) -> Result<Vec<LinkView>, CallError> {
    call(
        op::FLOW_PATH,
        &api::RouterPair {
            from: from.into(),
            to: to.into(),
        },
    )
}

/// A router's neighbours.
pub fn neighbours(router: &str) -> Result<NeighboursView, CallError> {
    call(
        op::NEIGHBOURS,
        &api::Router {
            router: router.into(),
        },
    )
}

/// Directed links no monitor taps.
pub fn unmonitored() -> Result<Vec<LinkView>, CallError> {
    call(op::UNMONITORED, &Empty {})
}

/// Monitors that are up.
pub fn monitors() -> Result<Vec<MonitorView>, CallError> {
    call(op::MONITORS, &Empty {})
}

/// Status of the given monitors (every monitor that is up if empty).
pub fn status(monitors: &[String], timeout_ms: u64) -> Result<api::Statuses, CallError> {
    call(
        op::STATUS,
        &api::StatusQuery {
            monitors: monitors.to_vec(),
            timeout_ms: Some(timeout_ms),
        },
    )
}

/// Deploys an analyzer (S2); the monitors fetch and start it (S3).
pub fn deploy<P: Serialize>(request: &Deploy<P>) -> Result<Deployed, CallError> {
    call(op::DEPLOY, request)
}

/// New params for a running deployment, on every monitor it runs on.
pub fn configure<P: Serialize>(deployment: &str, params: &P) -> Result<Outcome, CallError> {
    call(
        op::CONFIGURE,
        &Configure {
            deployment: deployment.into(),
            params,
        },
    )
}

/// Replaces a running deployment's analyzer by the module stored as `blob`,
/// each monitor keeping the deployment's state: monitor after monitor,
/// stopping at the first refusal (the rest are `skipped`). `params`: the
/// new module's params (`None::<&()>`: the deployment's current ones). Only
/// a deployment this app's manager owns.
pub fn upgrade<P: Serialize>(
    deployment: &str,
    blob: &str,
    params: Option<&P>,
) -> Result<Upgraded, CallError> {
    call(
        op::UPGRADE,
        &Upgrade {
            deployment: deployment.into(),
            blob: blob.into(),
            params,
        },
    )
}

/// Collects a deployment's results (S4/S5); monitors that do not answer
/// within `timeout_ms` are listed in `missing`.
pub fn collect<R: DeserializeOwned>(
    deployment: &str,
    timeout_ms: u64,
    archive: bool,
) -> Result<Collected<R>, CallError> {
    call(
        op::COLLECT,
        &Collect {
            deployment: deployment.into(),
            timeout_ms: Some(timeout_ms),
            archive,
        },
    )
}

/// Unloads a deployment everywhere (S6/S7); returns the final results.
pub fn unload<R: DeserializeOwned>(deployment: &str) -> Result<Collected<R>, CallError> {
    call(
        op::UNLOAD,
        &DeploymentRef {
            deployment: deployment.into(),
        },
    )
}

/// Publishes a report on `tm.v1.reports.{manager}.{app}`; returns its sequence number.
pub fn publish<B: Serialize>(kind: &str, body: &B) -> Result<u64, CallError> {
    call(
        op::PUBLISH,
        &api::Publish {
            kind: kind.into(),
            body,
        },
    )
}

/// Appends `body` as a JSON line to the archive under `name`.
pub fn archive<B: Serialize>(name: &str, body: &B) -> Result<Vec<String>, CallError> {
    call::<_, api::Archived>(
        op::ARCHIVE,
        &api::Archive {
            name: name.into(),
            body,
        },
    )
    .map(|a| a.paths)
}

/// Calls [`App::on_timer`] with `timer` every `every_ms`.
pub fn set_timer(timer: u32, every_ms: u64) -> Result<(), CallError> {
    call::<_, Empty>(
        op::SET_TIMER,
        &api::SetTimer {
            timer,
            every_ms,
            once: false,
        },
    )
    .map(|_| ())
}

/// Calls [`App::on_timer`] with `timer` once, after `after_ms`.
pub fn set_timeout(timer: u32, after_ms: u64) -> Result<(), CallError> {
    call::<_, Empty>(
        op::SET_TIMER,
        &api::SetTimer {
            timer,
            every_ms: after_ms,
            once: true,
        },
    )
    .map(|_| ())
}

/// Stops a timer.
pub fn cancel_timer(timer: u32) -> Result<(), CallError> {
    call::<_, Empty>(op::CANCEL_TIMER, &api::TimerRef { timer }).map(|_| ())
}

/// Delivers the deployment's events to [`App::on_event`] from now on.
pub fn subscribe(deployment: &str) -> Result<(), CallError> {
    call::<_, Empty>(
        op::SUBSCRIBE,
        &DeploymentRef {
            deployment: deployment.into(),
        },
    )
    .map(|_| ())
}

/// The runtime behind the exports; used by [`export_app!`] only.
#[doc(hidden)]
pub mod rt {
    use super::*;
    pub use tm_guest_rt::rt::alloc;
    use tm_guest_rt::rt::take_buffer;

    /// Guest state: the app and the last error.
    pub struct Slot<A>(tm_guest_rt::rt::Slot<A>);

    impl<A: App> Default for Slot<A> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<A: App> Slot<A> {
        /// An empty slot.
        pub const fn new() -> Self {
            Slot(tm_guest_rt::rt::Slot::new())
        }

        fn with_app(&self, f: impl FnOnce(&mut A) -> Result<(), String>) -> u32 {
            let state = self.0.get();
            let result = match state.guest.as_mut() {
                Some(app) => f(app),
                None => Err("the app has not started".to_string()),
            };
            state.status(result, Status::Failed)
        }

        /// `tm_app_start`
        pub fn start(&self, ptr: u32, len: u32) -> u32 {
            let bytes = take_buffer(ptr, len);
            let state = self.0.get();
            let result = decode_params::<A::Params>(&bytes)
                .and_then(A::start)
                .map(|app| state.guest = Some(app));
            state.status(result, Status::BadParams)
        }

        /// `tm_app_timer`
        pub fn timer(&self, timer: u32, now_ns: u64) -> u32 {
            self.with_app(|app| app.on_timer(timer, now_ns))
        }

        /// `tm_app_event`
        pub fn event(&self, ptr: u32, len: u32) -> u32 {
            let bytes = take_buffer(ptr, len);
            self.with_app(|app| app.on_event(&bytes))
        }

        /// `tm_app_stop`
        pub fn stop(&self) -> u32 {
            let result = self.with_app(|app| app.stop());
            self.0.get().guest = None;
            result
        }

        /// `tm_last_error`
        pub fn last_error(&self) -> u64 {
            self.0.last_error()
        }
    }
}

/// Generates the ABI v1 exports for an [`App`] type.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __tm_app_exports {
            use super::*;

            static SLOT: $crate::rt::Slot<$app> = $crate::rt::Slot::new();

            #[no_mangle]
            pub extern "C" fn tm_app_abi_version() -> u32 {
                $crate::api::ABI_VERSION
            }

            #[no_mangle]
            pub extern "C" fn tm_alloc(len: u32) -> u32 {
                $crate::rt::alloc(len)
            }

            #[no_mangle]
            pub extern "C" fn tm_app_start(ptr: u32, len: u32) -> u32 {
                SLOT.start(ptr, len)
            }

            #[no_mangle]
            pub extern "C" fn tm_app_timer(timer: u32, now_ns: u64) -> u32 {
                SLOT.timer(timer, now_ns)
            }

            #[no_mangle]
            pub extern "C" fn tm_app_event(ptr: u32, len: u32) -> u32 {
                SLOT.event(ptr, len)
            }

            #[no_mangle]
            pub extern "C" fn tm_app_stop() -> u32 {
                SLOT.stop()
            }

            #[no_mangle]
            pub extern "C" fn tm_last_error() -> u64 {
                SLOT.last_error()
            }
        }
    };
}

/// Address prefixes (CIDR) and lookups, for mapping hosts to routers.
pub mod net {
    use std::net::IpAddr;

    /// An address prefix such as `10.1.0.0/16` or `2001:db8::/32`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Prefix {
        addr: IpAddr,
        len: u8,
    }

    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    impl Prefix {
        /// Parses `addr/len` (a bare address is a host prefix).
        pub fn parse(text: &str) -> Result<Prefix, String> {
            let (addr, len) = match text.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (text, None),
            };
            let addr: IpAddr = addr.trim().parse().map_err(|_| {
                format!(
                    "{:?} is not an address prefix (want e.g. 10.1.0.0/16)",
                    text
                )
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("{:?}: prefix length must be 0 to {}", text, max))?,
            };
            Ok(Prefix { addr, len })
        }

        /// Prefix length in bits.
        pub fn len(&self) -> u8 {
            self.len
        }

        /// True for a /0.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// True if `ip` is inside.
        pub fn contains(&self, ip: IpAddr) -> bool {
            if ip.is_ipv4() != self.addr.is_ipv4() {
                return false;
            }
            // IPv4 sits in the top 32 bits, so one mask works for both.
            if self.len == 0 {
                return true;
            }
            let m = u128::MAX << (128 - u32::from(self.len));
            (bits(ip) & m) == (bits(self.addr) & m)
        }
    }
}

/// Longest-prefix match of addresses to names (routers, sites).
pub mod lpm {
    use super::net::Prefix;
    use std::net::IpAddr;

    /// A prefix and the router it sits behind: the rows of the apps'
    /// `prefixes` param.
    #[derive(Debug, Clone, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PrefixRow {
        /// `10.10.0.0/16`
        pub prefix: String,
        /// The router's address.
        pub router: String,
    }

    /// The router table of a `prefixes` param; errors name the bad row.
    pub fn routers_of(rows: &[PrefixRow]) -> Result<Table<String>, String> {
        let mut routers = Table::new();
        for (i, row) in rows.iter().enumerate() {
            let p =
                Prefix::parse(&row.prefix).map_err(|e| format!("prefixes[{}].prefix: {}", i, e))?;
            if row.router.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "prefixes[{}].router = {:?}: not an IP address",
                    i, row.router
                ));
            }
            routers.insert(p, row.router.clone());
        }
        Ok(routers)
    }

    /// A table of prefixes, each with a value.
    #[derive(Debug, Clone, Default)]
    pub struct Table<V> {
        entries: Vec<(Prefix, V)>,
    }

    impl<V> Table<V> {
        /// An empty table.
        pub fn new() -> Self {
            Table {
                entries: Vec::new(),
            }
        }

        /// Adds a prefix.
        pub fn insert(&mut self, prefix: Prefix, value: V) {
            self.entries.push((prefix, value));
            // Longest first, so the first match is the best.
            self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        }

        /// The value of the longest prefix containing `ip`.
        pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
            self.entries
                .iter()
                .find(|(p, _)| p.contains(ip))
                .map(|(_, v)| v)
        }

        /// Number of prefixes.
        pub fn len(&self) -> usize {
            self.entries.len()
        }

        /// True if there are none.
        pub fn is_empty(&self) -> bool {
            self.entries.is_empty()
        }
    }
}

/// Test support for apps' native unit tests: the reference network and its link table (docs/lab.md) as
/// the host's `topology` op returns it, and the host's `flow_path` rule.
///
/// Routers R1..R4 = 10.0.1.1..10.0.4.1; monitor 10.9.0.1 taps R1→R2 (link
/// 0) and R2→R1 (1), 10.9.0.2 taps R2→R3 (0) and R3→R2 (1), 10.9.0.3 taps
/// R3→R4 (0) and R1→R4 (1); R4→R1 and R4→R3 exist and nobody taps them.
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use std::net::IpAddr;

    use crate::{LinkView, TapView, TopologyView};

    pub const R1: &str = "10.0.1.1";
    pub const R2: &str = "10.0.2.1";
    pub const R3: &str = "10.0.3.1";
    pub const R4: &str = "10.0.4.1";
    pub const M1: &str = "10.9.0.1";
    pub const M2: &str = "10.9.0.2";
    pub const M3: &str = "10.9.0.3";

    pub fn link(from: &str, to: &str, taps: &[(&str, u32)]) -> LinkView {
        LinkView {
            from_router: from.into(),
            to_router: to.into(),
            taps: taps
                .iter()
                .map(|&(m, id)| TapView {
                    monitor_address: m.into(),
                    link_id: id,
                })
                .collect(),
        }
    }

    /// What the host's `topology` returns for figure5.toml.
    pub fn figure5() -> TopologyView {
        TopologyView {
            revision: 7,
            routers: vec![R1.into(), R2.into(), R3.into(), R4.into()],
            links: vec![
                link(R1, R2, &[(M1, 0)]),
                link(R1, R4, &[(M3, 1)]),
                link(R2, R1, &[(M1, 1)]),
                link(R2, R3, &[(M2, 0)]),
                link(R3, R2, &[(M2, 1)]),
                link(R3, R4, &[(M3, 0)]),
                link(R4, R1, &[]),
                link(R4, R3, &[]),
            ],
        }
    }

    /// The host's `flow_path`: the fewest hops, ties to the smallest sequence
    /// of router addresses (breadth-first, successors in address order).
    pub fn host_flow_path(t: &TopologyView, from: &str, to: &str) -> Option<Vec<LinkView>> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut parent: BTreeMap<String, String> = BTreeMap::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        seen.insert(from.to_string());
        let mut queue = VecDeque::new();
        queue.push_back(from.to_string());
        while let Some(n) = queue.pop_front() {
            if n == to {
                break;
            }
            let mut next: Vec<&String> = t
                .links
                .iter()
                .filter(|l| l.from_router == n)
                .map(|l| &l.to_router)
                .collect();
            next.sort_by_key(|r| ip(r));
            for r in next {
                if seen.insert(r.clone()) {
                    parent.insert(r.clone(), n.clone());
                    queue.push_back(r.clone());
                }
            }
        }
        if !seen.contains(to) {
            return None;
        }
        let mut routers = vec![to.to_string()];
        while let Some(p) = parent.get(routers.last().unwrap()) {
            routers.push(p.clone());
        }
        routers.reverse();
        Some(
            routers
                .windows(2)
                .map(|w| {
                    t.links
                        .iter()
                        .find(|l| l.from_router == w[0] && l.to_router == w[1])
                        .unwrap()
                        .clone()
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::lpm::Table;
    use super::net::Prefix;

    #[test]
    fn prefixes_match_by_longest() {
        let mut t = Table::new();
        t.insert(Prefix::parse("10.0.0.0/8").unwrap(), "wide");
        t.insert(Prefix::parse("10.1.0.0/16").unwrap(), "narrow");
        t.insert(Prefix::parse("2001:db8::/32").unwrap(), "v6");
        assert_eq!(t.lookup("10.1.2.3".parse().unwrap()), Some(&"narrow"));
        assert_eq!(t.lookup("10.2.2.3".parse().unwrap()), Some(&"wide"));
        assert_eq!(t.lookup("11.0.0.1".parse().unwrap()), None);
        assert_eq!(t.lookup("2001:db8::5".parse().unwrap()), Some(&"v6"));
        assert_eq!(t.lookup("::ffff:10.1.2.3".parse().unwrap()), None);
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("10.0.0/8").is_err());
        assert!(Prefix::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Prefix::parse("10.0.0.1")
            .unwrap()
            .contains("10.0.0.1".parse().unwrap()));
        assert!(!Prefix::parse("10.0.0.1")
            .unwrap()
            .contains("10.0.0.2".parse().unwrap()));
    }
}
