//! docker-compose.yml cannot drift from the code: every service that runs
//! one of our binaries has its command line run against the built binary
//! with `--check-config`, its bind-mounted config files read from where
//! compose would mount them from.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The compose file as JSON (through python3's yaml, which setup installs).
fn compose() -> serde_json::Value {
    // Debian's python3 has python3-yaml (setup installs it); another
    // python3 on PATH may not.
    let python = if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(root().join("docker-compose.yml"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "cannot read docker-compose.yml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_service_command_passes_check_config() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    // Named volumes: one temp dir each, shared by the services that mount
    // them, so what `auth` writes is there for the others.
    let volumes = tempfile::tempdir().unwrap();
    let configs = tempfile::tempdir().unwrap();
    // `tmctl auth init` first: the others read the seeds it writes.
    let mut order: Vec<(&String, &serde_json::Value)> = services.iter().collect();
    order.sort_by_key(|(_, s)| s["command"].get(1).and_then(|a| a.as_str()) != Some("auth"));
    let mut checked = Vec::new();
    for (name, service) in order {
        let Some(command) = service["command"].as_array() else {
            continue;
        };
        let mut argv: Vec<String> = service["entrypoint"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(command)
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let bin = match argv[0].as_str() {
            "tm-monitor" => harness::monitor::monitor_bin(),
            "tm-manager" => PathBuf::from(env!("CARGO_BIN_EXE_tm-manager")),
            "tmctl" => PathBuf::from(env!("CARGO_BIN_EXE_tmctl")),
            "tm-console" => PathBuf::from(env!("CARGO_BIN_EXE_tm-console")),
            _ => continue,
        };
        // Mounts: container paths become host paths, in the arguments and
        // in the config files they name.
        let mut mounts = Vec::new();
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().unwrap();
            let mut parts = spec.split(':');
            let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
            let host = if host.starts_with("./") {
                root().join(host)
            } else {
                let dir = volumes.path().join(host);
                std::fs::create_dir_all(&dir).unwrap();
                dir
            };
            mounts.push((container.to_owned(), host.to_string_lossy().into_owned()));
        }
        let on_host = |a: &str| {
            mounts
                .iter()
                .find_map(|(c, h)| a.strip_prefix(c.as_str()).map(|rest| format!("{h}{rest}")))
        };
        for a in &mut argv[1..] {
            if let Some(host) = on_host(a) {
                *a = host;
            }
        }
        if argv[0] == "tm-monitor" {
            // The config's own paths (credentials) are container paths too.
            let i = argv.iter().position(|a| a == "--config").unwrap() + 1;
            let mut text = std::fs::read_to_string(&argv[i]).unwrap();
            for (c, h) in &mounts {
                text = text.replace(&format!("\"{c}/"), &format!("\"{h}/"));
            }
            let copy = configs.path().join(format!("{name}.toml"));
            std::fs::write(&copy, text).unwrap();
            argv[i] = copy.to_string_lossy().into_owned();
        }
        let auth_init = argv.get(1..3) == Some(&["auth".to_owned(), "init".to_owned()][..]);
        if argv[0] == "tmctl" && !auth_init {
            // tmctl has no config to check: its usage must parse.
            argv.push("--help".into());
        } else if argv[0] != "tmctl" {
            argv.push("--check-config".into());
        }
        let out = Command::new(&bin).args(&argv[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "service {name}: {argv:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(name.clone());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "auth",
            "console",
            "manager",
            "monitor-1",
            "monitor-2",
            "monitor-3",
            "tmctl"
        ],
        "services running our binaries"
    );
}

/// The monitors' configs are the figure-5 table's rows.
#[test]
fn compose_monitors_tap_figure5_links() {
    let topo =
        manager::topology::Topology::from_path(&root().join("examples/topology/figure5.toml"))
            .unwrap();
    for i in 1..=3 {
        let text =
            std::fs::read_to_string(root().join(format!("examples/compose/monitor-{i}.toml")))
                .unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        let address: std::net::IpAddr = v["address"].as_str().unwrap().parse().unwrap();
        let link = &v["link"][0];
        let id = link["id"].as_integer().unwrap() as u32;
        let l = topo
            .link(address, id)
            .unwrap_or_else(|| panic!("{address}:{id} is not in figure 5"));
        assert_eq!(l.from.to_string(), link["from_router"].as_str().unwrap());
        assert_eq!(l.to.to_string(), link["to_router"].as_str().unwrap());
    }
}
