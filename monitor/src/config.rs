//! The monitor's configuration: a TOML file, overridden by flags.
//!
//! ```toml
//! address = "133.255.10.1"          # the topology's monitor address
//! id = "mon-a"                      # default: the address, '.' and ':' as '-'
//! nats_url = "nats://127.0.0.1:4222" # several: comma-separated
//! nats_credentials = "m1.nk"  # nkey seed (`tmctl auth init`) or a JWT .creds file
//! jetstream_domain = "hub"     # a remote site on a leaf node: the hub's JetStream domain
//! replicas = 1            # of streams/buckets it creates (3 on a cluster)
//! metrics_listen = "127.0.0.1:9464"  # Prometheus endpoint GET /metrics (off when absent)
//! compiled_dir = "/var/cache/tm-monitor"  # compiled analyzers kept across restarts
//!                         # (created 0700; absent: every start compiles again)
//!
//! [limits]
//! memory_mb = 64          # linear-memory cap per analyzer
//! call_timeout_ms = 1000  # deadline of every guest call (met to within 5 %)
//! queue_batches = 64      # batches a deployment may have waiting
//! batch_packets = 256     # packets per guest call
//! tick_ms = 1000          # how often analyzers' tick runs
//! snapshot_ms = 5000      # how often deployments are saved for restart recovery
//! max_deployments = 256   # deployments loaded at once; more are refused
//! total_memory_mb = 8192  # sum of the deployments' memory caps (memory_mb each)
//!
//! [trust]                 # signed analyzers (tmctl analyzer put --sign-key)
//! keys = ["3b6a27bc…"]    # ed25519 public keys, 64 hex digits; any set: only
//! keys_file = "keys.txt"  # blobs signed by one of them load (one key per line)
//! owners = ["mgr-a", "tmctl"]  # only these may own deployments (load as owner,
//!                         # configure or unload as requester); empty: anyone
//!
//! [[link]]
//! id = 0
//! pcap = "captures/l12.pcap"   # or: interface = "tap0"
//! replay = "instant"           # instant | recorded-pace | loop | lossless (pcap only)
//! replay_waits_for = 1         # deployments attached before the replay starts
//! snaplen = 65535
//! buffer_mb = 16               # kernel buffer (interface only; per capture thread)
//! capture_threads = 1          # interface only: >1 fans the capture out by flow
//!                              # hash (PACKET_FANOUT) over that many threads
//! analyse_on_capture_thread = true  # the link's only deployment analyses on
//!                              # the capture thread (default: interfaces yes,
//!                              # replays no — a replay's reader and analyzer
//!                              # then run side by side on two cores)
//! from_router = "133.129.11.1"
//! to_router = "133.128.10.1"
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// How a pcap file is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Replay {
    /// As fast as the monitor can read.
    #[default]
    Instant,
    /// Paced by the file's timestamps.
    RecordedPace,
    /// Instantly, over and over, timestamps shifted forward each round.
    Loop,
    /// As fast as the slowest deployment takes it: the replay waits for a
    /// full queue instead of dropping (offline analysis, benchmarks).
    Lossless,
}

/// Analyzer resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Linear-memory cap per analyzer, MiB.
    pub memory_mb: u32,
    /// Epoch deadline of every guest call, ms.
    pub call_timeout_ms: u64,
    /// Batches a deployment may have waiting before packets are dropped.
    pub queue_batches: usize,
    /// Packets per guest call.
    pub batch_packets: u32,
    /// Period of analyzers' `tick`, ms.
    pub tick_ms: u64,
    /// Period of deployment snapshots (for restart recovery), ms.
    pub snapshot_ms: u64,
    /// Deployments loaded at once; a load past it is refused
    /// (`resource_limit`).
    pub max_deployments: usize,
    /// Memory all deployments may take together, MiB: each reserves its
    /// `memory_mb` cap, and a load that would pass this is refused
    /// (`resource_limit`).
    pub total_memory_mb: u64,
    /// Bytes results and events may take while they wait for the bus, MiB;
    /// past it the oldest periodic windows (then alerts) are shed and
    /// counted. Final windows and lifecycle events are kept.
    pub outbox_mb: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            call_timeout_ms: 1000,
            queue_batches: 64,
            batch_packets: 256,
            tick_ms: 1000,
            snapshot_ms: 5000,
            max_deployments: 256,
            total_memory_mb: 8192,
            outbox_mb: 64,
        }
    }
}

/// One link: one direction of a physical line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Link id, unique within the monitor.
    pub id: u32,
    /// Capture live on this interface.
    #[serde(default)]
    pub interface: Option<String>,
    /// Or replay this pcap file (relative to the config file).
    #[serde(default)]
    pub pcap: Option<PathBuf>,
    /// How a pcap file is replayed.
    #[serde(default)]
    pub replay: Replay,
    /// A replay starts once this many deployments are attached to the link
    /// (pcap only), so that analyzers loaded one after the other all see
    /// the whole file.
    #[serde(default = "default_replay_waits_for")]
    pub replay_waits_for: u32,
    /// Bytes kept of each packet.
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    /// Kernel capture buffer, MiB (interfaces only).
    #[serde(default = "default_buffer_mb")]
    pub buffer_mb: u32,
    /// Capture threads (interfaces only): more than one spreads the
    /// packets over that many captures by flow hash (`PACKET_FANOUT`), each
    /// with its own ring of `buffer_mb` and its own thread parsing and
    /// batching, all feeding the same deployments.
    #[serde(default = "default_capture_threads")]
    pub capture_threads: u32,
    /// While one deployment is on the link, its analyzer runs on the
    /// capture thread instead of its own (no hand-over between threads:
    /// less CPU per packet, one core per capture thread). Default: on for
    /// interfaces, off for replays.
    #[serde(default)]
    pub analyse_on_capture_thread: Option<bool>,
    /// Router the traffic comes from.
    pub from_router: String,
    /// Router the traffic goes to.
    pub to_router: String,
}

fn default_replay_waits_for() -> u32 {
    1
}

fn default_snaplen() -> u32 {
    65535
}

fn default_buffer_mb() -> u32 {
    16
}

fn default_capture_threads() -> u32 {
    1
}

/// Where a link's packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Live capture.
    Interface(String),
    /// Replay of a file.
    Pcap(PathBuf, Replay),
}

impl LinkConfig {
    /// Link `id` replaying the file at `path` from router `from` to `to`,
    /// everything else as a config file's defaults.
    #[must_use]
    pub fn replay(id: u32, path: PathBuf, replay: Replay, from: &str, to: &str) -> Self {
        LinkConfig {
            id,
            interface: None,
            pcap: Some(path),
            replay,
            replay_waits_for: default_replay_waits_for(),
            snaplen: default_snaplen(),
            buffer_mb: default_buffer_mb(),
            capture_threads: default_capture_threads(),
            analyse_on_capture_thread: None,
            from_router: from.into(),
            to_router: to.into(),
        }
    }

    /// Whether the link's only deployment analyses on the capture thread
    /// (`analyse_on_capture_thread`, by default on for interfaces).
    #[must_use]
    pub fn analyses_on_capture_thread(&self) -> bool {
        self.analyse_on_capture_thread
            .unwrap_or(self.interface.is_some())
    }

    /// The link's source, once validated.
    #[must_use]
    pub fn source(&self) -> Source {
        match (&self.interface, &self.pcap) {
            (Some(i), _) => Source::Interface(i.clone()),
            (None, Some(p)) => Source::Pcap(p.clone(), self.replay),
            (None, None) => unreachable!("validated: a link has a source"),
        }
    }

    /// `iface:<name>` or `pcap:<path>`, as reported on the bus.
    #[must_use]
    pub fn source_label(&self) -> String {
        match self.source() {
            Source::Interface(i) => format!("iface:{i}"),
            Source::Pcap(p, _) => format!("pcap:{}", p.display()),
        }
    }
}

/// Which signers' analyzers the monitor runs (see `wasm_host::trust`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Trusted ed25519 public keys, hex.
    pub keys: Vec<String>,
    /// A file of trusted keys, one per line (relative: to the config file).
    pub keys_file: Option<PathBuf>,
    /// The managers (and operator identities) that may own deployments on
    /// this monitor; empty: any.
    pub owners: Vec<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The monitor's address (the topology's first column).
    pub address: String,
    /// Monitor id; default derived from the address.
    #[serde(default)]
    pub id: Option<String>,
    /// NATS server URL(s), comma-separated.
    #[serde(default = "default_nats_url")]
    pub nats_url: String,
    /// NATS identity: an nkey seed file (`tmctl auth init`) or a JWT
    /// `.creds` file (relative: to the config file).
    #[serde(default)]
    pub nats_credentials: Option<PathBuf>,
    /// The JetStream domain of the streams and buckets, for a monitor of a
    /// remote site connected to a leaf-node server without JetStream of its
    /// own (its JetStream API requests then cross the leaf link as
    /// `$JS.<domain>.API.>`); none: the server's own JetStream.
    #[serde(default)]
    pub jetstream_domain: Option<String>,
    /// Replicas of the streams and buckets the monitor creates when they
    /// are missing (1 on a single server, 3 on a cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Where the Prometheus endpoint (`GET /metrics`) listens; none: off.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where compiled analyzers are kept, so a restart (or a second
    /// deployment in another process) does not compile them again;
    /// relative: to the config file. None: not kept.
    #[serde(default)]
    pub compiled_dir: Option<PathBuf>,
    /// Where a stop writes the results and events it could not deliver
    /// before `stop_timeout_ms`, for the next start to publish; relative: to
    /// the config file. None: they are named in the log as lost.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// How long a stop (SIGTERM) may take to unload deployments and deliver
    /// their final windows, ms.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Analyzer limits.
    #[serde(default)]
    pub limits: Limits,
    /// Trusted signers; none: signatures are not required.
    #[serde(default)]
    pub trust: TrustConfig,
    /// The links.
    #[serde(default, rename = "link")]
    pub links: Vec<LinkConfig>,
}

fn default_stop_timeout_ms() -> u64 {
    10_000
}

fn default_replicas() -> usize {
    1
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}

impl Config {
    /// Reads and parses a TOML file; relative pcap paths are resolved
    /// against the file's directory. Does not validate (see [`Config::validate`]).
    ///
    /// # Errors
    /// If the file cannot be read or is not valid TOML for this schema.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("config {} is invalid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(p) = &config.trust.keys_file
            && p.is_relative()
        {
            config.trust.keys_file = Some(base.join(p));
        }
        if let Some(p) = &config.nats_credentials
            && p.is_relative()
        {
            config.nats_credentials = Some(base.join(p));
        }
        if let Some(p) = &config.compiled_dir
            && p.is_relative()
        {
            config.compiled_dir = Some(base.join(p));
        }
        if let Some(p) = &config.spool_dir
            && p.is_relative()
        {
            config.spool_dir = Some(base.join(p));
        }
        for link in &mut config.links {
            if let Some(p) = &link.pcap
                && p.is_relative()
            {
                link.pcap = Some(base.join(p));
            }
        }
        Ok(config)
    }

    /// Where identities are enforced (a credentials file is given), a
    /// monitor's id is bound to its address: the address must be an IP
    /// address and the id the one derived from it, so that the liveness
    /// record only it may write names only its own address.
    ///
    /// # Errors
    /// Naming the address or id that breaks the binding.
    pub fn check_identity_binding(&self) -> Result<()> {
        if self.nats_credentials.is_none() {
            return Ok(());
        }
        if self.address.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "address = {:?}: not an IP address; with nats_credentials a monitor's identity is its address",
                self.address
            );
        }
        let id = self.monitor_id();
        if !bus_schema::holds_address(&id, &self.address) {
            bail!(
                "id = {id:?}: with nats_credentials a monitor's id is its address's ({:?} for address {:?}); \
                 identities are made per address with `tmctl auth init --monitor {}`",
                bus_schema::id_from_address(&self.address),
                self.address,
                self.address
            );
        }
        Ok(())
    }

    /// The monitor id: `id`, or the address made into a valid token.
    #[must_use]
    pub fn monitor_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| bus_schema::id_from_address(&self.address))
    }

    /// The trusted signers: `trust.keys` and the keys in `trust.keys_file`.
    ///
    /// # Errors
    /// The entry or line holding a bad key.
    pub fn trusted_keys(&self) -> Result<wasm_host::trust::TrustedKeys> {
        let mut keys = wasm_host::trust::TrustedKeys::from_hex("trust.keys", &self.trust.keys)?;
        if let Some(file) = &self.trust.keys_file {
            keys = keys.with(
                wasm_host::trust::TrustedKeys::from_file(file)
                    .map_err(|e| anyhow::anyhow!("trust.keys_file: {e}"))?,
            );
        }
        Ok(keys)
    }

    /// Checks every field, naming the first bad one and its value.
    ///
    /// # Errors
    /// A message naming the field (`link[2].pcap`, `limits.memory_mb` …).
    pub fn validate(&self) -> Result<()> {
        if let Some(d) = &self.jetstream_domain {
            bus_schema::validate_token("jetstream_domain", d)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if self.address.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "address = {:?}: not an IP address (a monitor's address is the IPv4 or IPv6 address the topology names it by)",
                self.address
            );
        }
        bus_schema::validate_token("id", &self.monitor_id())?;
        bus_schema::nats::server_addrs(&self.nats_url)
            .map_err(|e| anyhow::anyhow!("nats_url{e}"))?;
        if let Some(c) = &self.nats_credentials
            && !c.is_file()
        {
            bail!(
                "nats_credentials = {:?}: no such file",
                c.display().to_string()
            );
        }
        self.check_identity_binding()?;
        self.trusted_keys()?;
        for (i, owner) in self.trust.owners.iter().enumerate() {
            bus_schema::validate_token(&format!("trust.owners[{i}]"), owner)?;
        }
        if !(1..=5).contains(&self.replicas) {
            bail!("replicas = {}: must be 1 to 5", self.replicas);
        }
        let l = &self.limits;
        if !(1..=4096).contains(&l.memory_mb) {
            bail!("limits.memory_mb = {}: must be 1 to 4096", l.memory_mb);
        }
        if !(1..=600_000).contains(&l.call_timeout_ms) {
            bail!(
                "limits.call_timeout_ms = {}: must be 1 to 600000",
                l.call_timeout_ms
            );
        }
        if !(1..=100_000).contains(&l.queue_batches) {
            bail!(
                "limits.queue_batches = {}: must be 1 to 100000",
                l.queue_batches
            );
        }
        if !(1..=65_536).contains(&l.batch_packets) {
            bail!(
                "limits.batch_packets = {}: must be 1 to 65536",
                l.batch_packets
            );
        }
        if !(10..=3_600_000).contains(&l.tick_ms) {
            bail!("limits.tick_ms = {}: must be 10 to 3600000", l.tick_ms);
        }
        if !(100..=3_600_000).contains(&l.snapshot_ms) {
            bail!(
                "limits.snapshot_ms = {}: must be 100 to 3600000",
                l.snapshot_ms
            );
        }
        if !(1..=10_000).contains(&l.max_deployments) {
            bail!(
                "limits.max_deployments = {}: must be 1 to 10000",
                l.max_deployments
            );
        }
        if l.total_memory_mb < u64::from(l.memory_mb) || l.total_memory_mb > 1 << 20 {
            bail!(
                "limits.total_memory_mb = {}: must be at least limits.memory_mb ({}) and at most 1048576",
                l.total_memory_mb,
                l.memory_mb
            );
        }
        if !(1..=65_536).contains(&l.outbox_mb) {
            bail!("limits.outbox_mb = {}: must be 1 to 65536", l.outbox_mb);
        }
        if !(100..=600_000).contains(&self.stop_timeout_ms) {
            bail!(
                "stop_timeout_ms = {}: must be 100 to 600000",
                self.stop_timeout_ms
            );
        }
        if let Some(d) = &self.spool_dir
            && !d.is_dir()
        {
            bail!(
                "spool_dir = {:?}: no such directory",
                d.display().to_string()
            );
        }
        if self.links.is_empty() {
            bail!("link: at least one [[link]] is needed");
        }
        let mut ids = HashSet::new();
        for (i, link) in self.links.iter().enumerate() {
            let at = format!("link[{i}]");
            if !ids.insert(link.id) {
                bail!("{at}.id = {}: used by another link", link.id);
            }
            match (&link.interface, &link.pcap) {
                (Some(_), Some(_)) => bail!("{at}: give either interface or pcap, not both"),
                (None, None) => bail!("{at}: needs interface = \"NAME\" or pcap = \"FILE\""),
                (Some(iface), None) => {
                    if iface.is_empty() {
                        bail!("{at}.interface = \"\": empty");
                    }
                    if link.replay_waits_for != 1 {
                        bail!("{at}.replay_waits_for: only pcap links are replayed");
                    }
                    if link.replay != Replay::Instant {
                        bail!("{at}.replay: only pcap links are replayed");
                    }
                }
                (None, Some(p)) => {
                    if !p.is_file() {
                        bail!("{at}.pcap = {:?}: no such file", p.display().to_string());
                    }
                    if link.capture_threads != 1 {
                        bail!(
                            "{at}.capture_threads = {}: only an interface's capture fans out (a pcap link is read by one thread)",
                            link.capture_threads
                        );
                    }
                    if !(1..=64).contains(&link.replay_waits_for) {
                        bail!(
                            "{at}.replay_waits_for = {}: must be 1 to 64",
                            link.replay_waits_for
                        );
                    }
                }
            }
            if !(64..=262_144).contains(&link.snaplen) {
                bail!("{at}.snaplen = {}: must be 64 to 262144", link.snaplen);
            }
            if !(1..=2048).contains(&link.buffer_mb) {
                bail!("{at}.buffer_mb = {}: must be 1 to 2048", link.buffer_mb);
            }
            if !(1..=64).contains(&link.capture_threads) {
                bail!(
                    "{at}.capture_threads = {}: must be 1 to 64",
                    link.capture_threads
                );
            }
            for (field, value) in [
                ("from_router", &link.from_router),
                ("to_router", &link.to_router),
            ] {
                if value.parse::<std::net::IpAddr>().is_err() {
                    bail!(
                        "{at}.{field} = {value:?}: not an IP address (routers are named by their addresses, as in the topology)"
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    const GOOD: &str = r#"
        address = "133.255.10.1"
        [[link]]
        id = 0
        interface = "lo"
        from_router = "133.129.11.1"
        to_router = "133.128.10.1"
    "#;

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.monitor_id(), "133-255-10-1");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.limits.memory_mb, 64);
        assert_eq!(c.links[0].snaplen, 65535);
        assert_eq!(c.links[0].source_label(), "iface:lo");
    }

    #[test]
    fn a_relative_compiled_dir_is_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.toml");
        let text = GOOD.replace(
            "address = \"133.255.10.1\"",
            "address = \"133.255.10.1\"\ncompiled_dir = \"compiled\"",
        );
        std::fs::write(&path, &text).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.compiled_dir, Some(dir.path().join("compiled")));
        assert_eq!(parse(GOOD).unwrap().compiled_dir, None);
        std::fs::write(&path, text.replace("\"compiled\"", "\"/var/cache/tm\"")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.compiled_dir, Some(PathBuf::from("/var/cache/tm")));
    }

    #[test]
    fn bad_fields_are_named_with_their_value() {
        let cases = [
            (
                GOOD.replace("id = 0", "id = 0\nsnaplen = 10"),
                "link[0].snaplen = 10",
            ),
            (
                GOOD.replace("interface = \"lo\"", "pcap = \"/nonexistent.pcap\""),
                "link[0].pcap = \"/nonexistent.pcap\"",
            ),
            (
                GOOD.replace("interface = \"lo\"", ""),
                "link[0]: needs interface",
            ),
            (
                GOOD.replace("id = 0", "id = 0\ncapture_threads = 0"),
                "link[0].capture_threads = 0: must be 1 to 64",
            ),
            (
                GOOD.replace(
                    "interface = \"lo\"",
                    "pcap = \"Cargo.toml\"\ncapture_threads = 2",
                ),
                "link[0].capture_threads = 2: only an interface's capture fans out",
            ),
            (format!("id = \"a.b\"\n{GOOD}"), "id = \"a.b\""),
            (
                format!("nats_url = \"nats://x:notaport\"\n{GOOD}"),
                "nats_url[0]",
            ),
            (
                format!("{GOOD}\n[limits]\nmemory_mb = 0"),
                "limits.memory_mb = 0",
            ),
            (
                format!(
                    "{GOOD}\n[[link]]\nid = 0\ninterface = \"lo\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\""
                ),
                "link[1].id = 0",
            ),
            (
                GOOD.replace("133.255.10.1", "133.256.10.1"),
                "address = \"133.256.10.1\": not an IP address",
            ),
            (
                GOOD.replace("133.129.11.1", "r1"),
                "link[0].from_router = \"r1\": not an IP address",
            ),
            (
                format!("{GOOD}\n[limits]\noutbox_mb = 0"),
                "limits.outbox_mb = 0",
            ),
            (
                format!("stop_timeout_ms = 5\n{GOOD}"),
                "stop_timeout_ms = 5",
            ),
            (
                format!("spool_dir = \"/nonexistent-spool\"\n{GOOD}"),
                "spool_dir = \"/nonexistent-spool\": no such directory",
            ),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
        let err = format!(
            "{:#}",
            toml::from_str::<Config>(&GOOD.replace("id = 0", "id = 0\nspeed = 1")).unwrap_err()
        );
        assert!(err.contains("speed"), "{err}");
    }
}
