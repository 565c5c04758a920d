//! A live interface, captured with libpcap (promiscuous, immediate mode,
//! non-blocking with a bounded wait so the link serves its controls while
//! the interface is quiet).

use std::os::fd::AsRawFd;

use super::{Drops, Next, PacketSource, timeval_ns};

/// How long a live capture waits for a packet before checking controls.
const LIVE_TIMEOUT_MS: i32 = 50;

/// A live capture on one interface.
pub struct LiveSource {
    cap: pcap::Capture<pcap::Active>,
    name: String,
}

impl LiveSource {
    /// Opens `name` for capture.
    ///
    /// # Errors
    /// A message naming the interface if libpcap cannot open it.
    pub fn open(name: &str, snaplen: u32, buffer_mb: u32) -> Result<Self, String> {
        let cap = pcap::Capture::from_device(name)
            .and_then(|c| {
                c.promisc(true)
                    .immediate_mode(true)
                    .snaplen(snaplen as i32)
                    .buffer_size((buffer_mb as i32) << 20)
                    .timeout(LIVE_TIMEOUT_MS)
                    .open()
            })
            .and_then(pcap::Capture::setnonblock)
            .map_err(|e| format!("cannot capture on {name}: {e}"))?;
        Ok(LiveSource {
            cap,
            name: name.to_owned(),
        })
    }
}

impl PacketSource for LiveSource {
    fn dlt(&self) -> i32 {
        self.cap.get_datalink().0
    }

    fn label(&self) -> String {
        format!("iface:{}", self.name)
    }

    fn waits_for_deployments(&self) -> bool {
        false
    }

    fn next(&mut self) -> Result<Next<'_>, String> {
        let fd = self.cap.as_raw_fd();
        match self.cap.next_packet() {
            Ok(p) => Ok(Next::Packet {
                ts_ns: timeval_ns(&p.header.ts, false),
                wire_len: p.header.len,
                data: p.data,
            }),
            Err(pcap::Error::TimeoutExpired) => {
                // Non-blocking: wait for the descriptor, bounded, so that
                // controls and partial batches are served while idle.
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call.
                unsafe { libc::poll(&raw mut pfd, 1, LIVE_TIMEOUT_MS) };
                Ok(Next::Idle)
            }
            Err(e) => Err(format!("capture failed: {e}")),
        }
    }

    fn drops(&mut self) -> Option<Drops> {
        self.cap.stats().ok().map(|s| Drops {
            kernel: u64::from(s.dropped),
            interface: u64::from(s.if_dropped),
        })
    }

    fn has_kernel_filter(&self) -> bool {
        true
    }

    fn set_kernel_filter(&mut self, expr: &str) -> Result<(), String> {
        self.cap.filter(expr, true).map_err(|e| e.to_string())
    }
}
