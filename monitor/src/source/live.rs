//! A live interface, captured with libpcap: promiscuous, into a
//! TPACKET_V3 ring (packets packed into blocks by their captured length,
//! so a buffer of `buffer_mb` holds many small packets, and a block is
//! handed over when full or [`BLOCK_TIMEOUT_MS`] after its first packet),
//! non-blocking with a bounded wait so the link serves its controls while
//! the interface is quiet. libpcap's immediate mode would use a TPACKET_V2
//! ring of one snap-length slot per packet instead: 16 MiB of 64 KiB slots
//! hold 250 packets, which a burst of small packets overruns.

use std::os::fd::AsRawFd;

use super::{Drops, Next, PacketSource, timeval_ns};

/// How long a live capture waits for a packet before checking controls.
const LIVE_TIMEOUT_MS: i32 = 50;

/// The longest a captured packet waits in a partly filled ring block
/// before the kernel hands the block over (libpcap's read timeout). On a
/// link busy enough to matter blocks fill first; on a quiet one each
/// hand-over wakes the link thread and calls the analyzer, so fewer of
/// them cost less (20 a second, where 10 ms made 100). Periodic results
/// are at least 100 ms apart: a packet is late for its window by at most
/// half of the shortest.
pub const BLOCK_TIMEOUT_MS: i32 = 50;

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
                    .snaplen(snaplen as i32)
                    .buffer_size((buffer_mb as i32) << 20)
                    .timeout(BLOCK_TIMEOUT_MS)
                    .open()
            })
            .and_then(pcap::Capture::setnonblock)
            .map_err(|e| format!("cannot capture on {name}: {e}"))?;
        // Asking for socket timestamps makes the kernel stamp every packet
        // once as it arrives, and packet sockets use that stamp: each of
        // several captures of a packet (a fanned-out link's, another link's
        // on the same interface, tcpdump's) has the same time. Without it
        // each capture reads the clock itself, a microsecond apart. If
        // refused, captures still work, with their own times.
        if setsockopt_u32(cap.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMP, 1).is_err() {
            tracing::debug!(
                interface = name,
                "SO_TIMESTAMP refused: captures read their own time"
            );
        }
        Ok(LiveSource {
            cap,
            name: name.to_owned(),
        })
    }
}

impl LiveSource {
    /// Opens `threads` captures of `name` joined in one `PACKET_FANOUT`
    /// group that spreads packets over them by flow hash (both directions
    /// of a flow to the same capture; IP fragments reassembled for the
    /// hash first, so a fragmented datagram lands on one capture too).
    ///
    /// Each capture rejects every packet (a kernel filter) from the moment
    /// it is opened until it has joined the group, and what it held before
    /// that is discarded: no packet is captured twice. The group's id is
    /// one the kernel picks, unique in the network namespace.
    ///
    /// # Errors
    /// A message naming the interface if it cannot be opened or the kernel
    /// refuses the group.
    pub fn open_fanout(
        name: &str,
        snaplen: u32,
        buffer_mb: u32,
        threads: usize,
    ) -> Result<Vec<Self>, String> {
        let mut sources = Vec::with_capacity(threads);
        let mut group: Option<u32> = None;
        for _ in 0..threads {
            let mut s = Self::open(name, snaplen, buffer_mb)?;
            let fail = |what: &str| {
                format!(
                    "cannot fan out the capture on {name}: {what}: {}",
                    std::io::Error::last_os_error()
                )
            };
            let fd = s.cap.as_raw_fd();
            reject_all(fd).map_err(|()| fail("SO_ATTACH_FILTER"))?;
            s.discard_held();
            let kind = libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_DEFRAG;
            let arg = match group {
                None => kind << 16 | libc::PACKET_FANOUT_FLAG_UNIQUEID << 16,
                Some(id) => id | kind << 16,
            };
            setsockopt_u32(fd, libc::SOL_PACKET, libc::PACKET_FANOUT, arg)
                .map_err(|()| fail("PACKET_FANOUT"))?;
            if group.is_none() {
                let got = getsockopt_u32(fd, libc::SOL_PACKET, libc::PACKET_FANOUT)
                    .map_err(|()| fail("reading the PACKET_FANOUT group"))?;
                group = Some(got & 0xffff);
            }
            // Capture everything again (the link installs its deployments'
            // filter later, as on any live capture).
            s.cap
                .filter("", true)
                .map_err(|e| format!("cannot fan out the capture on {name}: {e}"))?;
            sources.push(s);
        }
        tracing::debug!(interface = name, threads, group = ?group, "capture fanned out");
        Ok(sources)
    }

    /// Discards every packet the capture holds (its filter rejecting all
    /// new ones): after the block timeout the kernel has handed over the
    /// block being filled, so none is left to read later.
    fn discard_held(&mut self) {
        std::thread::sleep(std::time::Duration::from_millis(
            2 * BLOCK_TIMEOUT_MS as u64,
        ));
        while self.cap.next_packet().is_ok() {}
    }
}

/// Waits until the capture has packets, at most [`LIVE_TIMEOUT_MS`]
/// (non-blocking reads: controls and partial batches are served while the
/// interface is quiet).
fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&raw mut pfd, 1, LIVE_TIMEOUT_MS) };
}

/// Asks the CPU for the ring's next frame while this one is analysed.
///
/// In a TPACKET_V3 block the kernel writes each frame right after the
/// previous one: its `tpacket3_hdr` at the end of this packet's data
/// rounded up to 8 bytes, its packet data 86 bytes further on (header and
/// `sockaddr_ll` aligned to 16, the 4 bytes libpcap keeps for a VLAN tag,
/// minus the Ethernet header): three lines cover the header and the start
/// of the packet. The kernel wrote those lines on the core that received
/// the packet, so reading them is a cache miss that the prefetch overlaps
/// with this packet's work. Only a hint: a prefetch never faults, and past
/// a block's last frame it fetches a line nobody reads.
#[inline]
fn prefetch_next_frame(data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let next = (data.as_ptr() as usize).wrapping_add(data.len() + 7) & !7;
        for line in [0, 64, 128] {
            // SAFETY: prefetch is a hint; it reads nothing architecturally
            // and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line) as *const i8) };
        }
    }
}

/// Installs a kernel filter that rejects every packet on socket `fd`.
fn reject_all(fd: i32) -> Result<(), ()> {
    let mut code = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: a valid program for the duration of the call; the kernel
    // copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

fn setsockopt_u32(fd: i32, level: i32, name: i32, value: u32) -> Result<(), ()> {
    // SAFETY: a u32 option value, valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

fn getsockopt_u32(fd: i32, level: i32, name: i32) -> Result<u32, ()> {
    let mut value = 0u32;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: room for a u32 and its length, valid for the call.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    if rc == 0 { Ok(value) } else { Err(()) }
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

    fn burst(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(u64, u32, &[u8]),
    ) -> Option<Result<usize, String>> {
        // pcap_dispatch hands each packet straight from the ring;
        // pcap_next_ex would copy every one out first.
        let read = self.cap.dispatch(Some(max), |p| {
            prefetch_next_frame(p.data);
            each(timeval_ns(&p.header.ts, false), p.header.len, p.data);
        });
        Some(match read {
            Ok(0) => {
                wait_readable(self.cap.as_raw_fd());
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => Err(format!("capture failed: {e}")),
        })
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
                wait_readable(fd);
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
