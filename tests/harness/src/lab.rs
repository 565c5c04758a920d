//! The reference network (four routers in a ring, docs/lab.md) in Linux network namespaces, tapped like
//! optical taps, for end-to-end tests and `cargo xtask lab`.
//!
//! ```text
//!   H1 ── R1 10.0.1.1 ──L12── R2 10.0.2.1 ── H2
//!          │                   │
//!         L14                 L23
//!          │                   │
//!   H4 ── R4 10.0.4.1 ──L34── R3 10.0.3.1 ── H3
//! ```
//!
//! * Router `n` is a namespace with forwarding on, its router address
//!   `10.0.n.1/32` on `lo`, one veth per line (`lab` for line L*ab*, address
//!   `10.1.ab.n/24`), and a LAN veth `lan` (`10.{10n}.0.1/24`) to host `n`.
//! * Host `n` is a namespace with `eth0` = `10.{10n}.0.2/24` and a default
//!   route through its router.
//! * Static routes follow the topology's flow paths (breadth-first, smaller
//!   router address first): R1→R3 and R3→R1 cross R2, R2→R4 and R4→R2 cross
//!   R1.
//! * Each row of `examples/topology/figure5.toml` is one direction of a line,
//!   mirrored by tc (`clsact` + `u32 match u32 0 0` + `mirred egress mirror`)
//!   from the veth at the line's receiving end to its own tap: a veth pair
//!   whose root-namespace end a monitor captures on. The tap of direction
//!   X→Y sits on the wire after X's output queue, so loss in X's queue
//!   (netem) shows there as gaps.
//!
//! IPv6 is off and segmentation offloads are off on every lab interface, so
//! the lab is quiet until traffic is sent and taps see wire-sized frames.
//! Every address is inside the lab's namespaces. Everything, including
//! processes started with [`Lab::spawn`], is removed on drop, also after a
//! failed assertion.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lines of figure 1: (router a, router b), a < b.
pub const LINES: [(u8, u8); 4] = [(1, 2), (2, 3), (3, 4), (1, 4)];

/// A direction of a line and where it is tapped.
#[derive(Debug, Clone)]
pub struct Tap {
    /// The monitor address of the figure-5 row.
    pub monitor_address: &'static str,
    /// Its link id.
    pub link_id: u32,
    /// Router the direction leaves.
    pub from: u8,
    /// Router it enters.
    pub to: u8,
    /// The tapped veth's namespace.
    pub ns: String,
    /// The tapped veth (in `ns`).
    pub dev: String,
    /// `ingress` or `egress` of `dev`.
    pub hook: &'static str,
    /// The tap interface in the root namespace, for a monitor's config.
    pub interface: String,
}

/// The figure-5 rows: (monitor address, link id, from router, to router, the
/// router whose veth is tapped).
const ROWS: [(&str, u32, u8, u8, u8); 6] = [
    ("10.9.0.1", 0, 1, 2, 2),
    ("10.9.0.1", 1, 2, 1, 2),
    ("10.9.0.2", 0, 2, 3, 3),
    ("10.9.0.2", 1, 3, 2, 3),
    ("10.9.0.3", 0, 3, 4, 4),
    ("10.9.0.3", 1, 1, 4, 4),
];

/// Router `n`'s address.
#[must_use]
pub fn router(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, n, 1)
}

/// Host `n`'s address (behind router `n`).
#[must_use]
pub fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, n * 10, 0, 2)
}

/// Router `n`'s address on line (a, b).
fn line_addr(a: u8, b: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, a * 10 + b, n)
}

/// The veth name of line (a, b) in either router.
fn line_dev(a: u8, b: u8) -> String {
    format!("l{a}{b}")
}

fn line_of(x: u8, y: u8) -> (u8, u8) {
    (x.min(y), x.max(y))
}

fn neighbours(n: u8) -> Vec<u8> {
    let mut v: Vec<u8> = LINES
        .iter()
        .filter_map(|&(a, b)| {
            if a == n {
                Some(b)
            } else if b == n {
                Some(a)
            } else {
                None
            }
        })
        .collect();
    v.sort_unstable();
    v
}

/// The next router from `from` toward `to`: a neighbour directly, else the
/// neighbour with the smaller address (the topology's flow-path rule; in the
/// square every other router is one or two hops away).
#[must_use]
pub fn next_hop(from: u8, to: u8) -> u8 {
    let n = neighbours(from);
    if n.contains(&to) { to } else { n[0] }
}

/// Runs a command; its stdout, or an error naming the command and stderr.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why the lab cannot run here (a missing tool, or no network namespaces),
/// or `None`.
#[must_use]
pub fn unavailable() -> Option<String> {
    missing(&[
        "ip", "tc", "ethtool", "ping", "iperf3", "dnsmasq", "dig", "curl", "hping3", "python3",
    ])
}

/// Which of `tools` is not installed, or that network namespaces cannot be
/// made here, or `None`.
#[must_use]
pub fn missing(tools: &[&str]) -> Option<String> {
    for tool in tools {
        if sh(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!(
                "{tool} is not installed (xtask/setup.sh installs it)"
            ));
        }
    }
    let probe = format!("tmprobe{}", std::process::id());
    if let Err(e) = sh(&["ip", "netns", "add", &probe]) {
        return Some(format!("network namespaces are unavailable: {e}"));
    }
    let _ = sh(&["ip", "netns", "del", &probe]);
    None
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The lab; torn down on drop.
pub struct Lab {
    tag: String,
    /// Tapped directions, in figure-5 order.
    pub taps: Vec<Tap>,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    /// Builds the network. On error everything made so far is removed.
    pub fn create() -> Result<Lab, String> {
        let tag = format!(
            "{:04}{}",
            std::process::id() % 10_000,
            NEXT.fetch_add(1, Ordering::Relaxed) % 10
        );
        let mut lab = Lab {
            tag,
            taps: Vec::new(),
            namespaces: Vec::new(),
            children: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    /// Router `n`'s namespace.
    #[must_use]
    pub fn router_ns(&self, n: u8) -> String {
        format!("tm{}r{n}", self.tag)
    }

    /// Host `n`'s namespace.
    #[must_use]
    pub fn host_ns(&self, n: u8) -> String {
        format!("tm{}h{n}", self.tag)
    }

    fn add_ns(&mut self, ns: String) -> Result<(), String> {
        // A namespace left by a crashed run with the same name goes first.
        let _ = sh(&["ip", "netns", "del", &ns]);
        sh(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        for cmd in [
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1",
            "sysctl -qw net.ipv6.conf.default.disable_ipv6=1",
            "sysctl -qw net.ipv4.conf.all.rp_filter=0",
            "sysctl -qw net.ipv4.conf.default.rp_filter=0",
            "ip link set lo up",
        ] {
            self.exec(&ns, &cmd.split(' ').collect::<Vec<_>>())?;
        }
        Ok(())
    }

    /// A veth pair `a_dev`@`a_ns` — `b_dev`@`b_ns` (`None`: the root
    /// namespace), up, with offloads off.
    fn veth(&self, a_ns: &str, a_dev: &str, b_ns: Option<&str>, b_dev: &str) -> Result<(), String> {
        let mut args = vec![
            "ip", "link", "add", a_dev, "netns", a_ns, "type", "veth", "peer", b_dev,
        ];
        if let Some(b_ns) = b_ns {
            args.extend(["netns", b_ns]);
        }
        sh(&args)?;
        let offloads_off = |ns: Option<&str>, dev: &str| -> Result<(), String> {
            let cmd = [
                "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
            ];
            let up = ["ip", "link", "set", dev, "up"];
            match ns {
                Some(ns) => {
                    self.exec(ns, &cmd)?;
                    self.exec(ns, &up)?;
                }
                None => {
                    sh(&[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
                    ])?;
                    sh(&cmd)?;
                    sh(&up)?;
                }
            }
            Ok(())
        };
        offloads_off(Some(a_ns), a_dev)?;
        offloads_off(b_ns, b_dev)
    }

    fn build(&mut self) -> Result<(), String> {
        for n in 1..=4 {
            self.add_ns(self.router_ns(n))?;
            self.add_ns(self.host_ns(n))?;
        }
        for n in 1..=4u8 {
            let (r, h) = (self.router_ns(n), self.host_ns(n));
            self.exec(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            self.exec(
                &r,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/32", router(n)),
                    "dev",
                    "lo",
                ],
            )?;
            self.veth(&r, "lan", Some(&h), "eth0")?;
            self.exec(
                &r,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.{}.0.1/24", n * 10),
                    "dev",
                    "lan",
                ],
            )?;
            self.exec(
                &h,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", host(n)),
                    "dev",
                    "eth0",
                ],
            )?;
            self.exec(
                &h,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{}.0.1", n * 10),
                ],
            )?;
        }
        for (a, b) in LINES {
            let dev = line_dev(a, b);
            self.veth(&self.router_ns(a), &dev, Some(&self.router_ns(b)), &dev)?;
            for n in [a, b] {
                self.exec(
                    &self.router_ns(n),
                    &[
                        "ip",
                        "addr",
                        "add",
                        &format!("{}/24", line_addr(a, b, n)),
                        "dev",
                        &dev,
                    ],
                )?;
            }
        }
        for from in 1..=4u8 {
            for to in (1..=4u8).filter(|&t| t != from) {
                let via = next_hop(from, to);
                let (a, b) = line_of(from, via);
                let gw = line_addr(a, b, via).to_string();
                for dst in [
                    format!("10.{}.0.0/16", to * 10),
                    format!("{}/32", router(to)),
                ] {
                    self.exec(
                        &self.router_ns(from),
                        &["ip", "route", "add", &dst, "via", &gw],
                    )?;
                }
            }
        }
        let mut with_clsact = Vec::new();
        for (i, &(monitor_address, link_id, from, to, at)) in ROWS.iter().enumerate() {
            let ns = self.router_ns(at);
            let (a, b) = line_of(from, to);
            let dev = line_dev(a, b);
            let hook = if at == to { "ingress" } else { "egress" };
            let tap_ns_dev = format!("tap{i}");
            let interface = format!("tm{}t{i}", self.tag);
            self.veth(&ns, &tap_ns_dev, None, &interface)?;
            if !with_clsact.contains(&(at, dev.clone())) {
                self.exec(&ns, &["tc", "qdisc", "add", "dev", &dev, "clsact"])?;
                with_clsact.push((at, dev.clone()));
            }
            self.exec(
                &ns,
                &[
                    "tc",
                    "filter",
                    "add",
                    "dev",
                    &dev,
                    hook,
                    "u32",
                    "match",
                    "u32",
                    "0",
                    "0",
                    "action",
                    "mirred",
                    "egress",
                    "mirror",
                    "dev",
                    &tap_ns_dev,
                ],
            )?;
            self.taps.push(Tap {
                monitor_address,
                link_id,
                from,
                to,
                ns,
                dev,
                hook,
                interface,
            });
        }
        Ok(())
    }

    /// Runs a command inside a namespace; its stdout.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Starts a command inside a namespace (stdout and stderr discarded);
    /// killed when the lab is dropped, if still running.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> Result<u32, String> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", args.join(" ")))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// A tap by its figure-5 row.
    #[must_use]
    pub fn tap(&self, monitor_address: &str, link_id: u32) -> &Tap {
        self.taps
            .iter()
            .find(|t| t.monitor_address == monitor_address && t.link_id == link_id)
            .unwrap_or_else(|| panic!("no tap {monitor_address}/{link_id} in the lab"))
    }

    /// The tap of direction `from` → `to`, if the lab taps it.
    #[must_use]
    pub fn tap_of(&self, from: u8, to: u8) -> Option<&Tap> {
        self.taps.iter().find(|t| t.from == from && t.to == to)
    }

    /// (packets, bytes) the tapped veth counted in the tap's direction:
    /// received for an ingress tap, sent for an egress tap.
    pub fn counters(&self, tap: &Tap) -> Result<(u64, u64), String> {
        let side = if tap.hook == "ingress" { "rx" } else { "tx" };
        let read = |what: &str| -> Result<u64, String> {
            let path = format!("/sys/class/net/{}/statistics/{side}_{what}", tap.dev);
            let text = self.exec(&tap.ns, &["cat", &path])?;
            text.trim()
                .parse()
                .map_err(|e| format!("{path}: {e}: {text:?}"))
        };
        Ok((read("packets")?, read("bytes")?))
    }

    /// `[[link]]` entries of a monitor's config: its taps, captured live.
    #[must_use]
    pub fn monitor_links(&self, monitor_address: &str) -> String {
        self.taps
            .iter()
            .filter(|t| t.monitor_address == monitor_address)
            .map(|t| {
                format!(
                    "[[link]]\nid = {}\ninterface = \"{}\"\nsnaplen = 256\nfrom_router = \"{}\"\nto_router = \"{}\"\n",
                    t.link_id,
                    t.interface,
                    router(t.from),
                    router(t.to)
                )
            })
            .collect()
    }

    /// Starts `iperf3 -s -1` on host `to` (port `port`), then runs
    /// `iperf3 -c` from host `from` with `args` (e.g. `-t 2 -b 20M`, `-u`)
    /// and waits for it; iperf3's output.
    pub fn iperf(&mut self, from: u8, to: u8, port: u16, args: &[&str]) -> Result<String, String> {
        let (server, port) = (host(to).to_string(), port.to_string());
        let ns = self.host_ns(to);
        self.spawn(&ns, &["iperf3", "-s", "-1", "-B", &server, "-p", &port])?;
        self.wait_listening(to, "tcp", &port)?;
        let mut cmd = vec!["iperf3", "-c", &server, "-p", &port];
        cmd.extend_from_slice(args);
        self.exec(&self.host_ns(from), &cmd)
    }

    /// Waits (up to 5 s) until something in host `n` listens on `port`.
    fn wait_listening(&self, n: u8, proto: &str, port: &str) -> Result<(), String> {
        let flag = if proto == "udp" { "-uln" } else { "-tln" };
        for _ in 0..100 {
            let out = self.exec(
                &self.host_ns(n),
                &["ss", "-H", flag, "sport", "=", &format!(":{port}")],
            )?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(format!(
            "nothing listens on {proto} port {port} in host {n} after 5 s"
        ))
    }

    /// `count` pings from host `from` to host `to`, 10 ms apart.
    pub fn ping(&self, from: u8, to: u8, count: u32) -> Result<String, String> {
        self.exec(
            &self.host_ns(from),
            &[
                "ping",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.01",
                "-W",
                "1",
                &host(to).to_string(),
            ],
        )
    }

    /// Starts dnsmasq on host `n` (port 53) answering `*.lab.test` with
    /// host 4's address and refusing to forward anything.
    pub fn dns_server(&mut self, n: u8) -> Result<(), String> {
        let listen = format!("--listen-address={}", host(n));
        let answer = format!("--address=/lab.test/{}", host(4));
        self.spawn(
            &self.host_ns(n),
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file",
                "--user=root",
                &listen,
                &answer,
            ],
        )?;
        self.wait_listening(n, "udp", "53")
    }

    /// `count` DNS queries (`q<i>.lab.test`, A) from host `from` to the
    /// server on host `server`; how many were answered with host 4.
    pub fn dns_queries(&self, from: u8, server: u8, count: u32) -> Result<u32, String> {
        let at = format!("@{}", host(server));
        let mut answered = 0;
        for i in 0..count {
            let name = format!("q{i}.lab.test");
            let out = self.exec(
                &self.host_ns(from),
                &["dig", "+short", "+tries=1", "+time=2", &at, &name, "A"],
            )?;
            if out.trim() == host(4).to_string() {
                answered += 1;
            }
        }
        Ok(answered)
    }

    /// Starts `python3 -m http.server` on host `n` serving `dir`.
    pub fn http_server(&mut self, n: u8, port: u16, dir: &std::path::Path) -> Result<(), String> {
        let (port, bind) = (port.to_string(), host(n).to_string());
        let dir = dir.to_str().ok_or("http dir is not UTF-8")?.to_owned();
        self.spawn(
            &self.host_ns(n),
            &[
                "python3",
                "-m",
                "http.server",
                &port,
                "--bind",
                &bind,
                "--directory",
                &dir,
            ],
        )?;
        self.wait_listening(n, "tcp", &port)
    }

    /// `count` HTTP GETs of `path` from host `from` to host `to`; how many
    /// returned 200.
    pub fn http_gets(
        &self,
        from: u8,
        to: u8,
        port: u16,
        path: &str,
        count: u32,
    ) -> Result<u32, String> {
        let url = format!("http://{}:{port}/{path}", host(to));
        let mut ok = 0;
        for _ in 0..count {
            let code = self.exec(
                &self.host_ns(from),
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                    &url,
                ],
            )?;
            if code.trim() == "200" {
                ok += 1;
            }
        }
        Ok(ok)
    }

    /// A bounded SYN flood: `count` SYNs from host `from` to host `to`'s
    /// port `port`, one every `interval_us` µs (hping3 `-c`, so it stops by
    /// itself).
    pub fn syn_flood(
        &self,
        from: u8,
        to: u8,
        port: u16,
        count: u32,
        interval_us: u32,
    ) -> Result<String, String> {
        self.hping_syns(from, to, &port.to_string(), count, interval_us)
    }

    /// A bounded port scan: SYNs from host `from` to `ports` consecutive
    /// ports of host `to` from `first`, one every `interval_us` µs.
    pub fn port_scan(
        &self,
        from: u8,
        to: u8,
        first: u16,
        ports: u32,
        interval_us: u32,
    ) -> Result<String, String> {
        self.hping_syns(from, to, &format!("++{first}"), ports, interval_us)
    }

    /// `count` SYNs with hping3 to host `to`'s port `port` (`N`, or `++N`
    /// to step through ports).
    fn hping_syns(
        &self,
        from: u8,
        to: u8,
        port: &str,
        count: u32,
        interval_us: u32,
    ) -> Result<String, String> {
        self.exec(
            &self.host_ns(from),
            &[
                "hping3",
                "-q",
                "-S",
                "-p",
                port,
                "-c",
                &count.to_string(),
                "-i",
                &format!("u{interval_us}"),
                &host(to).to_string(),
            ],
        )
        .or_else(hping_done)
    }

    /// Mixed real traffic over every tapped direction, each step announced
    /// through `progress`: iperf3 TCP H1→H3 (R1→R2→R3, ACKs back), iperf3
    /// UDP H3→H4 (R3→R4), pings H2→H4 (R2→R1→R4 and back), DNS from H1 to
    /// dnsmasq on H3, HTTP GETs of a 200 kB file from H2 to http.server on
    /// H4. `www` is a scratch directory for the HTTP server.
    pub fn workload(
        &mut self,
        www: &std::path::Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        progress("iperf3 TCP H1→H3, 2 s at 20 Mbit/s");
        self.iperf(1, 3, 5201, &["-t", "2", "-b", "20M"])?;
        progress("iperf3 UDP H3→H4, 2 s at 8 Mbit/s");
        self.iperf(3, 4, 5202, &["-u", "-t", "2", "-b", "8M", "-l", "1000"])?;
        progress("50 pings H2→H4");
        self.ping(2, 4, 50)?;
        progress("20 DNS queries H1→dnsmasq on H3");
        self.dns_server(3)?;
        let answered = self.dns_queries(1, 3, 20)?;
        if answered != 20 {
            return Err(format!("DNS: {answered} of 20 queries answered"));
        }
        progress("10 HTTP GETs H2→http.server on H4");
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(www.join("blob.bin"), blob)
            .map_err(|e| format!("{}: {e}", www.display()))?;
        self.http_server(4, 8080, www)?;
        let ok = self.http_gets(2, 4, 8080, "blob.bin", 10)?;
        if ok != 10 {
            return Err(format!("HTTP: {ok} of 10 GETs returned 200"));
        }
        Ok(())
    }

    /// Makes router `from` drop packets in its output queue toward `to`:
    /// `tc qdisc … root netem loss <percent>%` where the kernel has
    /// `sch_netem`, else (as on the kernels CI runs on, which lack it) a
    /// congested queue: `tbf` at `fallback_rate` with a 12 KB queue, which
    /// tail-drops a faster TCP flow's segments. Returns the qdisc set up.
    pub fn lossy(
        &self,
        from: u8,
        to: u8,
        percent: u32,
        fallback_rate: &str,
    ) -> Result<String, String> {
        let (a, b) = line_of(from, to);
        let dev = line_dev(a, b);
        let ns = self.router_ns(from);
        let loss = format!("{percent}%");
        let netem = [
            "tc", "qdisc", "add", "dev", &dev, "root", "netem", "loss", &loss,
        ];
        match self.exec(&ns, &netem) {
            Ok(_) => Ok(format!("netem loss {loss}")),
            Err(e) if e.contains("qdisc kind is unknown") => {
                let tbf = [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    &dev,
                    "root",
                    "tbf",
                    "rate",
                    fallback_rate,
                    "burst",
                    "4kb",
                    "limit",
                    "12kb",
                ];
                self.exec(&ns, &tbf)?;
                Ok(format!(
                    "tbf rate {fallback_rate} limit 12kb (no sch_netem in this kernel)"
                ))
            }
            Err(e) => Err(e),
        }
    }
}

/// hping3 exits with 1 when not every probe was answered (a flood's
/// SYN-ACKs and RSTs are not all counted): that is still a finished run.
fn hping_done(e: String) -> Result<String, String> {
    if e.contains("hping statistic") || e.contains("packets transmitted") {
        Ok(e)
    } else {
        Err(e)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its veths, and with them their peers
        // (the taps' root-namespace ends included).
        for ns in &self.namespaces {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}
