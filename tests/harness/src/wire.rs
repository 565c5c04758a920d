//! One wire between two network namespaces, for live capture at rate: a
//! sender namespace whose veth end `ls0` tcpreplay writes frames to, and a
//! capture namespace whose end `lc0` the tools under test capture on.
//!
//! Neither end has an address, IPv6 is off in both namespaces and nothing
//! routes: the replayed frames reach `lc0`, are seen by packet sockets and
//! dropped by the stack (their MAC addresses are not the interface's), so
//! nothing leaves the capture namespace. A thread that calls
//! [`Wire::enter_capture`] lives in the capture namespace from then on, and
//! so does every thread and process it starts (its tokio runtime, a
//! nats-server, a monitor): their loopback is the capture namespace's own.
//! Both namespaces (and the veth with them) are removed on drop.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::lab::sh;

/// The sender's end of the wire.
pub const SEND_DEV: &str = "ls0";
/// The capture end.
pub const CAPTURE_DEV: &str = "lc0";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why a wire cannot be made here (a missing tool, no namespaces), or `None`.
#[must_use]
pub fn unavailable() -> Option<String> {
    crate::lab::missing(&["ip", "tcpreplay"])
}

/// The two namespaces and the veth between them.
pub struct Wire {
    /// The sender's namespace.
    pub send_ns: String,
    /// The capture namespace.
    pub capture_ns: String,
}

/// What tcpreplay reported for one replay.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Packets it sent successfully.
    pub packets: u64,
    /// Packets it failed to send.
    pub failed: u64,
    /// The rate it achieved, packets per second.
    pub pps: f64,
}

impl Wire {
    /// Makes both namespaces and the wire; on error removes what it made.
    pub fn create() -> Result<Wire, String> {
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed) % 100
        );
        let wire = Wire {
            send_ns: format!("tmw{tag}s"),
            capture_ns: format!("tmw{tag}c"),
        };
        wire.build()?;
        Ok(wire)
    }

    fn build(&self) -> Result<(), String> {
        let (s, c) = (self.send_ns.as_str(), self.capture_ns.as_str());
        sh(&["ip", "netns", "add", s])?;
        sh(&["ip", "netns", "add", c])?;
        for ns in [s, c] {
            for conf in ["all", "default"] {
                self.exec(
                    ns,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{conf}.disable_ipv6=1"),
                    ],
                )?;
            }
            self.exec(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip",
            "link",
            "add",
            SEND_DEV,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            CAPTURE_DEV,
            "netns",
            c,
        ])?;
        self.exec(s, &["ip", "link", "set", SEND_DEV, "up"])?;
        self.exec(c, &["ip", "link", "set", CAPTURE_DEV, "up"])?;
        Ok(())
    }

    /// Runs a command inside `ns`; its stdout.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Moves the calling thread into the capture namespace (threads and
    /// processes it starts afterwards are there too).
    pub fn enter_capture(&self) -> Result<(), String> {
        let path = format!("/var/run/netns/{}", self.capture_ns);
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a namespace file descriptor, open for the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Replays `pcap` from the sender's end: at `pps` packets a second, or
    /// as fast as tcpreplay can (`None`), `loops` times over, the file
    /// cached in memory.
    pub fn replay(&self, pcap: &Path, pps: Option<u64>, loops: u32) -> Result<Sent, String> {
        let rate = match pps {
            Some(p) => format!("--pps={p}"),
            None => "--topspeed".into(),
        };
        let loops = format!("--loop={loops}");
        let file = pcap.to_str().ok_or("the capture's path is not UTF-8")?;
        let out = self.exec(
            &self.send_ns,
            &["tcpreplay", "-q", "-K", &loops, &rate, "-i", SEND_DEV, file],
        )?;
        let number = |label: &str| -> Result<f64, String> {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("no {label:?} in tcpreplay's output:\n{out}"))
        };
        let pps = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Rated:"))
            .and_then(|r| r.split(',').find(|f| f.trim_end().ends_with("pps")))
            .and_then(|f| f.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no rate in tcpreplay's output:\n{out}"))?;
        Ok(Sent {
            packets: number("Successful packets:")? as u64,
            failed: number("Failed packets:")? as u64,
            pps,
        })
    }

    /// Packets and drops the capture end's interface counted (rx).
    pub fn capture_rx(&self) -> Result<(u64, u64), String> {
        let read = |c: &str| -> Result<u64, String> {
            self.exec(
                &self.capture_ns,
                &[
                    "cat",
                    &format!("/sys/class/net/{CAPTURE_DEV}/statistics/{c}"),
                ],
            )?
            .trim()
            .parse()
            .map_err(|e| format!("{c}: {e}"))
        };
        Ok((read("rx_packets")?, read("rx_dropped")?))
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.send_ns]);
        let _ = sh(&["ip", "netns", "del", &self.capture_ns]);
    }
}
