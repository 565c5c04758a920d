//! The tm-monitor command line: --check-config and --help.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tm-monitor"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// --check-config accepts a valid file and names the bad field of an invalid one.
#[test]
fn check_config_validates_and_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("l.pcap");
    pcapgen::write_pcap(&pcap, pcapgen::linktype::ETHERNET, &pcapgen::mixed(1, 0)).unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "address = \"133.255.10.1\"\n[[link]]\nid = 0\npcap = \"l.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run(&["--config", good.to_str().unwrap(), "--check-config"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("monitor 133-255-10-1 with 1 link(s)"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "address = \"10.0.0.1\"\n[[link]]\nid = 0\npcap = \"l.pcap\"\nsnaplen = 1\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&["--config", bad.to_str().unwrap(), "--check-config"]);
    assert!(!ok);
    assert!(stderr.contains("link[0].snaplen = 1"), "{stderr}");
    // A monitor's address is an IP address.
    std::fs::write(
        &bad,
        "address = \"133.256.10.1\"\n[[link]]\nid = 0\npcap = \"l.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&["--config", bad.to_str().unwrap(), "--check-config"]);
    assert!(!ok);
    assert!(
        stderr.contains("address = \"133.256.10.1\": not an IP address"),
        "{stderr}"
    );

    // A flag overrides the file, and is validated too.
    let (ok, _, stderr) = run(&[
        "--config",
        good.to_str().unwrap(),
        "--id",
        "no.dots",
        "--check-config",
    ]);
    assert!(!ok);
    assert!(stderr.contains("id = \"no.dots\""), "{stderr}");

    let (ok, _, stderr) = run(&["--config", "/nonexistent.toml", "--check-config"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read config /nonexistent.toml"),
        "{stderr}"
    );
}

/// --help documents the flags and what the monitor does on the bus.
#[test]
fn help_explains() {
    let (ok, stdout, _) = run(&["--help"]);
    assert!(ok);
    for needle in [
        "--check-config",
        "--nats-url",
        "--nats-creds",
        "tm.v1.mon.<id>",
        "SIGTERM",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}:\n{stdout}");
    }
}
