//! A flow collector for the export tests and benchmark: Debian's `nfcapd`
//! (nfdump package) on a loopback UDP port, writing into a directory that
//! `nfdump` then reads back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A UDP port on 127.0.0.1 that was free a moment ago.
#[must_use]
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on loopback")
        .port()
}

/// A running `nfcapd`; stopped (and its file closed) by [`Nfcapd::stop`]
/// or on drop.
pub struct Nfcapd {
    child: Option<Child>,
    /// The UDP port it listens on (127.0.0.1).
    pub port: u16,
    /// Where it writes its files.
    pub dir: PathBuf,
}

impl Nfcapd {
    /// Starts it on a free port.
    #[must_use]
    pub fn start(dir: &Path) -> Nfcapd {
        Self::start_on(dir, free_udp_port())
    }

    /// Starts it on `port`, with an 8 MiB socket buffer.
    ///
    /// # Panics
    /// If `nfcapd` cannot be run (`xtask/setup.sh` installs it).
    #[must_use]
    pub fn start_on(dir: &Path, port: u16) -> Nfcapd {
        let child = Command::new("nfcapd")
            .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-t", "3600"])
            .args(["-B", "8388608", "-w"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nfcapd (Debian's nfdump package; xtask/setup.sh installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Nfcapd {
            child: Some(child),
            port,
            dir: dir.to_owned(),
        }
    }

    /// Runs `softflowd -r pcap` exporting IPFIX (milliseconds, a table of
    /// `max_flows`, IPv6 flows too with `ipv6`) to this collector, until it
    /// has read the file and exported every flow.
    ///
    /// # Panics
    /// If softflowd cannot be run or fails.
    pub fn softflowd(&self, pcap: &Path, max_flows: usize, ipv6: bool) {
        let status = Command::new("softflowd")
            .arg("-r")
            .arg(pcap)
            .args(["-v", "10", "-A", "milli", "-d", "-c", "none"])
            .args(ipv6.then_some("-6"))
            .args(["-m", &max_flows.to_string()])
            .args(["-n", &format!("127.0.0.1:{}", self.port)])
            .arg("-p")
            .arg(self.dir.join("softflowd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("softflowd (xtask/setup.sh installs it)");
        assert!(
            status.success(),
            "softflowd -r {}: {status}",
            pcap.display()
        );
    }

    /// Stops it with SIGTERM (it then writes out what it holds) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Stops it, then every record `nfdump -o json` reads from its files.
    ///
    /// # Panics
    /// If `nfdump` fails or prints something other than JSON.
    #[must_use]
    pub fn records(mut self) -> Vec<serde_json::Value> {
        self.stop();
        let out = Command::new("nfdump")
            .env("TZ", "UTC")
            .args(["-o", "json", "-R"])
            .arg(&self.dir)
            .output()
            .expect("nfdump");
        assert!(
            out.status.success(),
            "nfdump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("nfdump json: {e}: {}", String::from_utf8_lossy(&out.stdout))
        })
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops `child` with SIGTERM and waits for it.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
