//! Build and check automation, run as `cargo xtask <command>`.
//!
//! `xtask/run <command>` first runs `xtask/setup.sh` (installs what is
//! missing), then this. See `cargo xtask --help`.

mod compose_lab;
mod console;
mod demo;
mod guests;
mod lab;
mod session;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Build and check automation for the traffic monitor.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build every WebAssembly guest (analyzers/, mgmt-apps/) into
    /// target/wasm/, printing each module's size and SHA-256.
    Guests {
        /// Which toolchain builds the guests.
        #[arg(long, value_enum, default_value_t = guests::Toolchain::Auto, env = "TM_GUEST_TOOLCHAIN")]
        toolchain: guests::Toolchain,
    },
    /// The whole suite: guests, formatting, clippy, guest unit tests, then
    /// every workspace test (nextest when installed). Starts its own
    /// nats-server processes; needs nothing running.
    Test {
        /// Which toolchain builds the guests.
        #[arg(long, value_enum, default_value_t = guests::Toolchain::Auto, env = "TM_GUEST_TOOLCHAIN")]
        toolchain: guests::Toolchain,
        /// Skip cargo fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for the test runner (a filter, for example).
        #[arg(last = true)]
        runner_args: Vec<String>,
    },
    /// cargo fmt --check and clippy with warnings denied, host and guests.
    Lint,
    /// The single-machine demo: builds, starts nats-server, three monitors
    /// replaying the figure-1 network's links and a manager, runs link-load
    /// through S1–S8, prints the per-link report and the protocol mix, and
    /// stops everything (also on Ctrl-C). No root needed.
    Demo,
    /// The netns lab (root): the figure-1 network as network namespaces
    /// with tc mirred taps, three monitors capturing live, a manager;
    /// link-load through S1–S8 while iperf3, ping, DNS and HTTP cross it;
    /// prints each link's figures next to its veth's counters, then tears
    /// everything down (also on Ctrl-C).
    Lab,
    /// The compose lab (root): docker-compose.yml on this machine's Docker
    /// engine (dockerd started if none runs), images made here without a
    /// registry; prints each tapped direction's link-load bytes next to the
    /// router interface counters, the traffic matrix and the protocol mix,
    /// then `docker-compose down -v` (also on Ctrl-C).
    ComposeLab,
    /// The demo's network with the console open on it: three monitors
    /// replaying at recorded pace (a SYN flood among the traffic), a
    /// manager running link-load and dos-trace, and `tm-console`, whose
    /// URL it prints; runs until Ctrl-C. No root needed.
    Console {
        /// Where the console listens.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: std::net::SocketAddr,
        /// Open the console in headless Chromium, save `map.png` and
        /// `link.png` (R1→R2's chart) into DIR, and stop.
        #[arg(long, value_name = "DIR")]
        screenshot: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Guests { toolchain } => {
            guests::build_all(&root, toolchain)?;
        }
        Cmd::Test {
            toolchain,
            no_lint,
            runner_args,
        } => {
            disk_report(&root, "before the build");
            let wasm_dir = guests::build_all(&root, toolchain)?;
            if !no_lint {
                lint(&root)?;
            }
            let outcome = test(&root, &wasm_dir, &runner_args);
            disk_report(&root, "after the suite");
            outcome?;
        }
        Cmd::Lint => lint(&root)?,
        Cmd::Demo => demo::run(&root)?,
        Cmd::Lab => lab::run(&root)?,
        Cmd::ComposeLab => compose_lab::run(&root)?,
        Cmd::Console { listen, screenshot } => console::run(&root, listen, screenshot.as_deref())?,
    }
    Ok(())
}

/// The host workspace root (parent of xtask/).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command, failing with its command line if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("xtask: {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// fmt --check and clippy with warnings denied, on the host workspace and
/// every guest workspace.
fn lint(root: &Path) -> Result<()> {
    const CLIPPY: [&str; 6] = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    for dir in std::iter::once(root.to_owned()).chain(guests::workspaces(root)) {
        run(cargo()
            .current_dir(&dir)
            .args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().current_dir(&dir).args(CLIPPY))?;
    }
    Ok(())
}

/// Prints the space left on target/'s file system and what target/ takes.
/// A full disk shows up as a linker killed by SIGBUS, far from its cause;
/// this line says it plainly.
fn disk_report(root: &Path, when: &str) {
    /// The number in column `col` of line `line` of a command's output.
    fn read_kib(cmd: &mut Command, line: usize, col: usize) -> Option<u64> {
        let out = cmd.output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .nth(line)?
            .split_whitespace()
            .nth(col)?
            .parse()
            .ok()
    }
    let target = root.join("target");
    let probe = if target.exists() { &target } else { root };
    let gib = |kib: u64| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0));
    let free = read_kib(Command::new("df").arg("-Pk").arg(probe), 1, 3);
    let used = read_kib(Command::new("du").arg("-sk").arg(&target), 0, 0);
    eprintln!(
        "xtask: disk {when}: {} free, target/ {}",
        free.map_or("unknown".into(), gib),
        used.map_or("absent".into(), gib)
    );
    // A clean run of the suite leaves about 2.5 GB in target/.
    if free.is_some_and(|f| f < 4 * 1024 * 1024) {
        eprintln!("xtask: warning: under 4 GiB free; a clean run of the suite needs about 2.5");
    }
}

/// Finds a nats-server the tests can kill directly (not a pyenv shim).
fn nats_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.to_string_lossy().contains("/shims"))
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

fn test(root: &Path, wasm_dir: &Path, runner_args: &[String]) -> Result<()> {
    // Guest crates' own unit tests run natively.
    for guest in guests::workspaces(root) {
        run(cargo().current_dir(&guest).args(["test", "--quiet"]))?;
    }
    // And those of the feature builds.
    for (ws, krate, feature, _) in guests::VARIANTS {
        run(cargo().current_dir(root.join(ws)).args([
            "test",
            "--quiet",
            "-p",
            krate,
            "--features",
            feature,
        ]))?;
    }
    let nats = nats_server().context("nats-server not found: run xtask/setup.sh")?;
    let nextest = Command::new(cargo_bin("cargo-nextest"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if nextest {
        // nextest does not run doc tests; run them first so the suite's
        // summary is the last thing printed.
        run(cargo()
            .current_dir(root)
            .args(["test", "--workspace", "--doc", "--quiet"]))?;
    }
    let mut cmd = cargo();
    cmd.current_dir(root)
        .env("NATS_SERVER_BIN", &nats)
        .env("TM_WASM_DIR", wasm_dir);
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(runner_args);
    run(&mut cmd)
}

fn cargo_bin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.into())
}
