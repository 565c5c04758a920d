//! The compose lab (`docker-compose.yml`) on a real Docker engine, for its
//! test and `xtask/run compose-lab`.
//!
//! * [`Engine::start`] uses the running `dockerd`, or starts one (stopped
//!   again on drop); [`unavailable`] says why none can run here.
//! * [`images`] makes the images from parts on this machine, no registry:
//!   a Debian base from `debootstrap` (with [`PACKAGES`], cached as the
//!   image `tm-lab-base:bookworm`), the `local` target of the Dockerfile
//!   with the binaries and guests already built, and a NATS image carrying
//!   this machine's `nats-server` (`examples/compose/offline.yml` points the
//!   `nats` service at it).
//! * [`Lab::up`] starts the compose project, [`Lab::counters`] reads a
//!   router interface's counters straight from its network namespace
//!   (`/proc/<pid>/net/dev`), and drop runs `down -v` and checks nothing of
//!   the project is left.
//!
//! Every address the lab uses is inside the project's own networks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian packages of the lab's base image: what the monitors, routers and
/// hosts run (the Dockerfile's `runtime` target installs the same).
pub const PACKAGES: &[&str] = &[
    "libpcap0.8",
    "ca-certificates",
    "iproute2",
    "ethtool",
    "iperf3",
    "dnsmasq-base",
    "curl",
    "bind9-dnsutils",
    "iputils-ping",
    "python3",
    "procps",
];

/// The base image made with debootstrap.
pub const BASE_IMAGE: &str = "tm-lab-base:bookworm";
/// The tm image every tm service of the compose file uses.
pub const LAB_IMAGE: &str = "tm-lab:latest";
/// The NATS image `examples/compose/offline.yml` names.
pub const NATS_IMAGE: &str = "tm-lab-nats:local";

/// Packets and bytes per tap, by (monitor address, link id).
pub type Counters = BTreeMap<(String, u32), (u64, u64)>;

/// The taps of the compose lab: (monitor address, link id, router service,
/// tap in that router). `router.sh` makes them in this order.
pub const TAPS: [(&str, u32, &str, &str); 6] = [
    ("10.9.0.1", 0, "r2", "tap0"),
    ("10.9.0.1", 1, "r2", "tap1"),
    ("10.9.0.2", 0, "r3", "tap0"),
    ("10.9.0.2", 1, "r3", "tap1"),
    ("10.9.0.3", 0, "r4", "tap0"),
    ("10.9.0.3", 1, "r4", "tap1"),
];

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?} failed: {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why the compose lab cannot run here, if it cannot.
#[must_use]
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (dockerd and the lab's images need root)".into());
    }
    for p in ["docker", "docker-compose", "debootstrap"] {
        if !found(p) {
            return Some(format!(
                "{p} is not installed (xtask/setup.sh installs docker.io, docker-compose and debootstrap)"
            ));
        }
    }
    None
}

/// A Docker engine: the running one, or one started here.
pub struct Engine {
    started: Option<Child>,
}

impl Engine {
    /// Uses the running engine or starts `dockerd` (its log in
    /// `log_dir/dockerd.log`) and waits for it (at most 60 s).
    ///
    /// # Errors
    /// If no engine answers.
    pub fn start(log_dir: &Path) -> Result<Engine, String> {
        if run(Command::new("docker").arg("info")).is_ok() {
            return Ok(Engine { started: None });
        }
        if !found("dockerd") {
            return Err("no Docker engine runs and dockerd is not installed".into());
        }
        std::fs::create_dir_all(log_dir).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(log_dir.join("dockerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("dockerd: {e}"))?;
        let engine = Engine {
            started: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if run(Command::new("docker").arg("info")).is_ok() {
                return Ok(engine);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "dockerd did not answer within 60 s (log: {})",
            log_dir.join("dockerd.log").display()
        ))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(child) = &mut self.started {
            // SIGTERM: dockerd stops its containers and exits.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn image_exists(name: &str) -> bool {
    run(Command::new("docker").args(["image", "inspect", name])).is_ok()
}

/// Makes the lab's images: the debootstrap base (once; kept in
/// `cache/rootfs` and as [`BASE_IMAGE`]), [`LAB_IMAGE`] from the
/// Dockerfile's `local` target with the binaries in `root/bin_dir` and the
/// guests in `root/target/wasm`, and [`NATS_IMAGE`] with `nats_server`.
/// `say` hears each step.
///
/// # Errors
/// A step that failed, with its output.
pub fn images(
    root: &Path,
    bin_dir: &str,
    nats_server: &Path,
    cache: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    if image_exists(BASE_IMAGE) {
        say(&format!("{BASE_IMAGE}: cached"));
    } else {
        let rootfs = cache.join("rootfs");
        if !rootfs.join("usr/bin/iperf3").exists() {
            say("debootstrap --variant=minbase bookworm (about a minute)");
            let _ = std::fs::remove_dir_all(&rootfs);
            std::fs::create_dir_all(cache).map_err(|e| e.to_string())?;
            run(Command::new("debootstrap").args([
                "--variant=minbase",
                &format!("--include={}", PACKAGES.join(",")),
                "bookworm",
                &rootfs.to_string_lossy(),
                "http://deb.debian.org/debian",
            ]))?;
        }
        say(&format!("docker import → {BASE_IMAGE}"));
        run(Command::new("sh").args([
            "-c",
            &format!(
                "tar -C '{}' -c . | docker import - {BASE_IMAGE}",
                rootfs.display()
            ),
        ]))?;
    }
    say(&format!(
        "docker build --target local ({bin_dir}, target/wasm) → {LAB_IMAGE}"
    ));
    run(Command::new("docker")
        .current_dir(root)
        .env("DOCKER_BUILDKIT", "0")
        .args([
            "build",
            "-q",
            "--target",
            "local",
            "--build-arg",
            &format!("BIN_DIR={bin_dir}"),
            "-t",
            LAB_IMAGE,
            ".",
        ]))?;
    let ctx = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy(nats_server, ctx.path().join("nats-server")).map_err(|e| e.to_string())?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\nCOPY nats-server /usr/local/bin/nats-server\nENTRYPOINT [\"nats-server\"]\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    say(&format!(
        "docker build ({}) → {NATS_IMAGE}",
        nats_server.display()
    ));
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", NATS_IMAGE])
        .arg(ctx.path()))?;
    Ok(())
}

/// The nats-server executable itself (not a shim that starts it), for
/// copying into an image.
///
/// # Errors
/// If none is found.
pub fn nats_server_executable() -> Result<PathBuf, String> {
    let bin = crate::nats_server_bin().map_err(|e| e.to_string())?;
    let is_elf = std::fs::read(&bin)
        .map(|b| b.starts_with(b"\x7fELF"))
        .unwrap_or(false);
    if is_elf {
        return Ok(bin);
    }
    // A pyenv shim: ask pyenv where the executable is.
    let path = run(Command::new("pyenv").args(["which", "nats-server"]))?;
    Ok(PathBuf::from(path.trim()))
}

/// A running compose project; `down -v` on drop.
pub struct Lab {
    root: PathBuf,
    project: String,
    /// The routers' PIDs (their network namespaces), by service.
    pids: BTreeMap<String, u32>,
    /// Each tap's line interface and hook, by (router, tap).
    taps: BTreeMap<(String, String), (String, String)>,
}

impl Lab {
    fn compose(&self) -> Command {
        compose_cmd(&self.root, &self.project)
    }

    /// `docker-compose up -d` of the lab in `root` as project `project`
    /// (images from [`images`]); returns once the routers are healthy.
    ///
    /// # Errors
    /// If the project does not come up; it is taken down again.
    pub fn up(root: &Path, project: &str) -> Result<Lab, String> {
        let mut lab = Lab {
            root: root.to_owned(),
            project: project.to_owned(),
            pids: BTreeMap::new(),
            taps: BTreeMap::new(),
        };
        // What an earlier run left behind (a killed test) goes first.
        let _ = run(lab.compose().args(["down", "-v", "--remove-orphans"]));
        run(lab.compose().args(["up", "-d", "--no-build"]))?;
        for r in ["r2", "r3", "r4"] {
            let id = run(lab.compose().args(["ps", "-q", r]))?.trim().to_owned();
            let pid: u32 =
                run(Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", &id]))?
                    .trim()
                    .parse()
                    .map_err(|e| format!("pid of {r}: {e}"))?;
            lab.pids.insert(r.to_owned(), pid);
            let taps = run(Command::new("docker").args(["exec", &id, "cat", "/run/tm-taps"]))?;
            for line in taps.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [tap, dev, hook] = f[..] {
                    lab.taps.insert(
                        (r.to_owned(), tap.to_owned()),
                        (dev.to_owned(), hook.to_owned()),
                    );
                }
            }
        }
        if lab.taps.len() != TAPS.len() {
            return Err(format!(
                "the routers made {} taps, not {}: {:?}",
                lab.taps.len(),
                TAPS.len(),
                lab.taps
            ));
        }
        Ok(lab)
    }

    /// Packets and bytes that crossed a tap's direction so far: the line
    /// interface's transmit counters for an egress tap, receive counters
    /// for an ingress one, read in the router's network namespace.
    ///
    /// # Errors
    /// If the counters cannot be read.
    pub fn counters(&self, router: &str, tap: &str) -> Result<(u64, u64), String> {
        let (dev, hook) = self
            .taps
            .get(&(router.to_owned(), tap.to_owned()))
            .ok_or_else(|| format!("no tap {tap} in {router}"))?;
        let pid = self.pids[router];
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
            .map_err(|e| format!("{router}: {e}"))?;
        for line in text.lines() {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            if name.trim() != dev {
                continue;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // rx: bytes packets …; tx starts at the 9th field.
            return Ok(if hook == "egress" {
                (v[9], v[8])
            } else {
                (v[1], v[0])
            });
        }
        Err(format!("{router}: no interface {dev}"))
    }

    /// Every tap's counters, keyed by (monitor address, link id).
    ///
    /// # Errors
    /// If one cannot be read.
    pub fn all_counters(&self) -> Result<Counters, String> {
        TAPS.iter()
            .map(|&(m, l, r, t)| Ok(((m.to_owned(), l), self.counters(r, t)?)))
            .collect()
    }

    /// The line interface and hook a tap mirrors.
    #[must_use]
    pub fn tap_of(&self, router: &str, tap: &str) -> Option<&(String, String)> {
        self.taps.get(&(router.to_owned(), tap.to_owned()))
    }

    /// `docker-compose run --rm -T tmctl ARGS` (the operator's CLI).
    ///
    /// # Errors
    /// tmctl's failure, with its output.
    pub fn tmctl(&self, args: &[&str]) -> Result<String, String> {
        run(self
            .compose()
            .args(["run", "--rm", "-T", "tmctl"])
            .args(args))
    }

    /// `tmctl --json watch reports --only APP` in the tmctl service: each
    /// report as it is published, on a channel.
    ///
    /// # Errors
    /// If the watcher cannot start.
    pub fn watch_reports(&self, app: &str) -> Result<Watch, String> {
        let mut child = self
            .compose()
            .args([
                "run", "--rm", "-T", "tmctl", "--json", "watch", "reports", "--only", app,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("docker-compose: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Ok(Watch { child, rx })
    }

    /// Freezes (`pause`) or thaws (`unpause`) the four hosts: no new
    /// traffic crosses the lab while they are frozen.
    ///
    /// # Errors
    /// If compose fails.
    pub fn hosts(&self, action: &str) -> Result<(), String> {
        run(self.compose().args([action, "h1", "h2", "h3", "h4"])).map(|_| ())
    }

    /// A link-load round collected while the lab is quiet, and every tap's
    /// counters then: the hosts are frozen, the next round after 2 s of
    /// quiet is taken (its collect saw every packet the counters saw), and
    /// the hosts are thawed again.
    ///
    /// # Errors
    /// If no round comes within `wait`, or compose fails.
    pub fn quiet_reading(
        &self,
        watch: &Watch,
        wait: Duration,
    ) -> Result<(serde_json::Value, Counters), String> {
        self.hosts("pause")?;
        let reading = (|| {
            std::thread::sleep(Duration::from_secs(2));
            while watch.rx.try_recv().is_ok() {}
            let deadline = Instant::now() + wait;
            let round = loop {
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .ok_or("no link-load round while the lab was quiet")?;
                let r = watch
                    .rx
                    .recv_timeout(left)
                    .map_err(|_| "no link-load round while the lab was quiet")?;
                if r["kind"] == "link-load" {
                    break r;
                }
            };
            Ok::<_, String>((round, self.all_counters()?))
        })();
        self.hosts("unpause")?;
        reading
    }

    /// The logs of every service (for a failure's message).
    #[must_use]
    pub fn logs(&self) -> String {
        run(self.compose().args(["logs", "--no-color", "--tail", "40"])).unwrap_or_default()
    }

    /// What of the project is left: containers, networks, volumes.
    #[must_use]
    pub fn leftovers(project: &str) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={project}");
        let mut left = Vec::new();
        for what in [
            ["ps", "-a", "-q", "--filter"],
            ["network", "ls", "-q", "--filter"],
            ["volume", "ls", "-q", "--filter"],
        ] {
            if let Ok(out) = run(Command::new("docker").args(what).arg(&label)) {
                left.extend(out.lines().map(|l| format!("{} {l}", what[0])));
            }
        }
        left
    }

    /// Takes the project down (`down -v`).
    ///
    /// # Errors
    /// If compose fails.
    pub fn down(&mut self) -> Result<(), String> {
        run(self
            .compose()
            .args(["--profile", "tools", "down", "-v", "--remove-orphans"]))
        .map(|_| ())
    }
}

fn compose_cmd(root: &Path, project: &str) -> Command {
    let mut c = Command::new("docker-compose");
    c.current_dir(root).args([
        "-p",
        project,
        "-f",
        "docker-compose.yml",
        "-f",
        "examples/compose/offline.yml",
    ]);
    c
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// A running `tmctl watch`; its reports on `rx`.
pub struct Watch {
    child: Child,
    /// Reports as JSON values.
    pub rx: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
