//! Builds the WebAssembly guests (docs/guests.md).
//!
//! With rustup's `wasm32-unknown-unknown` target: one `cargo build`. Without
//! it: rustup's cargo resolves and vendors the guest dependencies, then
//! Debian's cargo 1.65 + rustc 1.63 (with `libstd-rust-dev-wasm32`) compiles
//! them offline from that vendor directory. Either way the modules land in
//! `target/wasm/`. Guests written in C (`analyzers/c/*.c`, against
//! `analyzers/abi/tm_abi.h`) are compiled with clang's wasm32 target.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::run;

const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Which toolchain builds the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toolchain {
    /// rustup's wasm32 target if installed, else Debian's.
    Auto,
    /// rustup's `wasm32-unknown-unknown` target.
    Rustup,
    /// Debian's rustc 1.63 + libstd-rust-dev-wasm32.
    Debian,
}

/// The guest cargo workspaces that exist.
pub fn workspaces(root: &Path) -> Vec<PathBuf> {
    ["analyzers", "mgmt-apps"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.join("Cargo.toml").is_file())
        .collect()
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
}

fn resolve(toolchain: Toolchain) -> Result<Toolchain> {
    Ok(match toolchain {
        Toolchain::Auto if rustup_has_target() => Toolchain::Rustup,
        Toolchain::Auto | Toolchain::Debian => {
            if !Path::new(DEBIAN_CARGO).is_file() || !Path::new(DEBIAN_RUSTC).is_file() {
                bail!(
                    "no WebAssembly toolchain: rustup has no {TARGET} target and {DEBIAN_CARGO} is missing; \
                     run xtask/setup.sh"
                );
            }
            Toolchain::Debian
        }
        Toolchain::Rustup => {
            if !rustup_has_target() {
                bail!(
                    "rustup has no {TARGET} target: run `rustup target add {TARGET}` or use --toolchain debian"
                );
            }
            Toolchain::Rustup
        }
    })
}

/// Builds every guest workspace; returns the directory holding the modules.
pub fn build_all(root: &Path, toolchain: Toolchain) -> Result<PathBuf> {
    let toolchain = resolve(toolchain)?;
    let out = root.join("target/wasm");
    std::fs::create_dir_all(&out)?;
    // Remove modules from earlier builds so nothing stale is ever used.
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::remove_file(&path)?;
        }
    }
    let mut built = Vec::new();
    for ws in workspaces(root) {
        let name = ws.file_name().unwrap().to_string_lossy().into_owned();
        let target_dir = root
            .join("target/guests")
            .join(format!("{name}-{toolchain:?}").to_lowercase());
        match toolchain {
            Toolchain::Rustup => build_rustup(&ws, &target_dir, &[])?,
            Toolchain::Debian => build_debian(root, &ws, &name, &target_dir, &[])?,
            Toolchain::Auto => unreachable!("resolved above"),
        }
        let release = target_dir.join(TARGET).join("release");
        for entry in
            std::fs::read_dir(&release).with_context(|| format!("read {}", release.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                // Module names use dashes, like their crates.
                let file = path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replace('_', "-");
                let dest = out.join(&file);
                std::fs::copy(&path, &dest)?;
                built.push(dest);
            }
        }
    }
    built.extend(build_variants(root, toolchain, &out)?);
    built.extend(build_c(root, &out)?);
    if built.is_empty() {
        bail!("no guest modules were built");
    }
    built.sort();
    eprintln!(
        "xtask: guests built with {toolchain:?} into {}",
        out.display()
    );
    for path in &built {
        let bytes = std::fs::read(path)?;
        eprintln!(
            "  {:<28} {:>8} bytes  sha256 {}",
            path.file_name().unwrap().to_string_lossy(),
            bytes.len(),
            hex::encode(Sha256::digest(&bytes))
        );
    }
    Ok(out)
}

/// Other builds of a guest, made with a cargo feature, for the upgrade
/// tests: (workspace, crate, feature, module name).
pub const VARIANTS: &[(&str, &str, &str, &str)] = &[
    ("analyzers", "flow-stats", "next-state", "flow-stats-next"),
    (
        "analyzers",
        "flow-stats",
        "trap-restore",
        "flow-stats-trap-restore",
    ),
];

/// Builds each of [`VARIANTS`] in a target directory of its own (so the
/// default build is not rebuilt) and copies it to `out` under its name.
fn build_variants(root: &Path, toolchain: Toolchain, out: &Path) -> Result<Vec<PathBuf>> {
    let mut built = Vec::new();
    for (ws, krate, feature, module) in VARIANTS {
        let ws = root.join(ws);
        let name = ws.file_name().unwrap().to_string_lossy().into_owned();
        let target_dir = root
            .join("target/guests")
            .join(format!("{module}-{toolchain:?}").to_lowercase());
        let args = ["-p", krate, "--features", feature];
        match toolchain {
            Toolchain::Rustup => build_rustup(&ws, &target_dir, &args)?,
            Toolchain::Debian => build_debian(root, &ws, &name, &target_dir, &args)?,
            Toolchain::Auto => unreachable!("resolved above"),
        }
        let file = format!("{}.wasm", krate.replace('-', "_"));
        let from = target_dir.join(TARGET).join("release").join(file);
        let dest = out.join(format!("{module}.wasm"));
        std::fs::copy(&from, &dest).with_context(|| format!("copy {}", from.display()))?;
        built.push(dest);
    }
    Ok(built)
}

/// rustup's cargo builds the workspace `ws` (with `extra` arguments) for
/// wasm32 into `target_dir`.
fn build_rustup(ws: &Path, target_dir: &Path, extra: &[&str]) -> Result<()> {
    run(Command::new("cargo")
        .current_dir(ws)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(target_dir)
        .args(extra))
}

/// Debian's cargo cannot reach the crates.io index, and rustup's cargo cannot
/// drive rustc 1.63: vendor with the one, compile offline with the other.
fn build_debian(
    root: &Path,
    ws: &Path,
    name: &str,
    target_dir: &Path,
    extra: &[&str],
) -> Result<()> {
    let vendor = root.join("target/guests/vendor").join(name);
    run(Command::new("cargo")
        .current_dir(ws)
        .args(["vendor", "--locked", "--versioned-dirs", "--quiet"])
        .arg(&vendor)
        .stdout(std::process::Stdio::null()))?;
    run(Command::new(DEBIAN_CARGO)
        .current_dir(ws)
        // Debian's cargo must use Debian's rustc, not rustup's proxy on PATH.
        .env("RUSTC", DEBIAN_RUSTC)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .args([
            "build",
            "--offline",
            "--locked",
            "--release",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(target_dir)
        .args(["--config", "source.crates-io.replace-with=\"vendored\""])
        .arg("--config")
        .arg(format!(
            "source.vendored.directory=\"{}\"",
            vendor.display()
        ))
        .args(extra))
}

/// A clang that can target wasm32: on PATH, else Debian's LLVM install.
fn clang() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("clang")];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        let mut llvm: Vec<PathBuf> = dirs
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("llvm-"))
            })
            .map(|p| p.join("bin/clang"))
            .collect();
        llvm.sort();
        candidates.extend(llvm.into_iter().rev());
    }
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--print-targets")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32"))
    })
}

/// Compiles every `analyzers/c/*.c` to `out/<name>.wasm`.
fn build_c(root: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("analyzers/c");
    let mut sources: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "c"))
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    sources.sort();
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let clang = clang().context(
        "no clang with a wasm32 target for the C analyzers in analyzers/c: run xtask/setup.sh",
    )?;
    let mut built = Vec::new();
    for src in sources {
        let dest = out.join(src.with_extension("wasm").file_name().unwrap());
        run(Command::new(&clang)
            .args([
                "--target=wasm32",
                "-O2",
                "-nostdlib",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-Wl,--no-entry",
                "-o",
            ])
            .arg(&dest)
            .arg(&src))?;
        built.push(dest);
    }
    Ok(built)
}
