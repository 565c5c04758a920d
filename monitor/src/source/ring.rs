//! A TPACKET_V3 ring of the monitor's own on an `AF_PACKET` socket, for
//! Ethernet and loopback interfaces: the link thread walks the ring's
//! blocks itself, each packet's header read once and the packet handed on
//! in place, with no per-packet call through libpcap.
//!
//! The socket is set up as libpcap sets up its own for such an interface
//! (promiscuous, bound to the interface, the kernel's outgoing copies on
//! loopback ignored, VLAN tags the kernel took off put back in front of
//! the packet), so what a link captures is what libpcap would give it.
//! Kernel filters are compiled by libpcap for Ethernet and attached to
//! the socket, their accepted length cut to the snap length; a filter
//! that tests VLAN tags stays in the monitor (the kernel's filter runs on
//! the packet without its tag).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::Drops;

/// The block header's `block_status`, 8 bytes into a block.
const BLOCK_STATUS: usize = 8;
/// The block header's `num_pkts`.
const BLOCK_NUM_PKTS: usize = 12;
/// The block header's `offset_to_first_pkt`.
const BLOCK_FIRST: usize = 16;

/// A frame's `tpacket3_hdr`, the fields the walk reads.
#[derive(Clone, Copy)]
#[repr(C)]
struct FrameHeader {
    next_offset: u32,
    sec: u32,
    nsec: u32,
    snaplen: u32,
    len: u32,
    status: u32,
    mac: u16,
    net: u16,
    rxhash: u32,
    vlan_tci: u32,
    vlan_tpid: u16,
}

/// The smallest ring block: a block's worth of small packets is several
/// hundred, so handing blocks over costs little per packet.
const MIN_BLOCK: usize = 128 * 1024;

/// A TPACKET_V3 ring on one interface.
pub(super) struct Ring {
    fd: OwnedFd,
    map: *mut u8,
    map_len: usize,
    block_size: usize,
    blocks: usize,
    /// The block the walk is in.
    current: usize,
    /// The current block is the monitor's (the kernel handed it over).
    held: bool,
    /// Packets of the current block not read yet.
    left: u32,
    /// Offset in the current block of the next packet.
    next: usize,
    /// Bytes the kernel keeps of a packet (a filter's accepted length).
    snaplen: u32,
    /// Kernel drops reported so far (the kernel's counters restart at
    /// every read).
    kernel_drops: u64,
    /// The interface's `rx_dropped` + `rx_missed_errors` when the ring
    /// was opened: interface drops are counted from then.
    if_drops_base: u64,
    name: String,
    /// A packet with its VLAN tag put back.
    tagged: Vec<u8>,
}

// SAFETY: the mapping belongs to the ring alone and is only touched
// through `&mut self` (by the link thread that owns it).
unsafe impl Send for Ring {}

impl Ring {
    /// Opens a ring of `buffer_mb` on interface `name`, promiscuous,
    /// keeping `snaplen` bytes of each packet; blocks are handed over
    /// `block_timeout_ms` after their first packet at the latest.
    /// `None` if the interface is not Ethernet or loopback (libpcap then
    /// captures it).
    ///
    /// # Errors
    /// What the kernel refused, naming the step.
    pub(super) fn open(
        name: &str,
        snaplen: u32,
        buffer_mb: u32,
        block_timeout_ms: u32,
    ) -> Result<Option<Self>, String> {
        let cname = CString::new(name).map_err(|_| "a NUL in its name".to_owned())?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(os_error("no such interface"));
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call; the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if raw < 0 {
            return Err(os_error("socket(AF_PACKET)"));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = fd.as_raw_fd();
        let hatype = hardware_type(sock, &cname)?;
        if hatype != libc::ARPHRD_ETHER && hatype != libc::ARPHRD_LOOPBACK {
            return Ok(None);
        }
        set(
            sock,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            libc::tpacket_versions::TPACKET_V3 as u32,
        )
        .map_err(|()| os_error("PACKET_VERSION"))?;
        if hatype == libc::ARPHRD_LOOPBACK {
            // Loopback shows every packet twice (sent and received); only
            // the received copy, as libpcap keeps.
            set(sock, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
                .map_err(|()| os_error("PACKET_IGNORE_OUTGOING"))?;
        }
        // Only the snap length from the first packet on (the link's
        // deployments install their filter later).
        attach(sock, &mut [accept(snaplen)]).map_err(|()| os_error("SO_ATTACH_FILTER"))?;
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a valid sockaddr_ll and its length.
        let rc = unsafe {
            libc::bind(
                sock,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error("bind"));
        }
        // SAFETY: a zeroed packet_mreq is valid; the fields set below.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = ifindex as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(sock, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
            .map_err(|()| os_error("PACKET_ADD_MEMBERSHIP (promiscuous)"))?;
        // Every packet stamped once as it arrives (see LiveSource::open).
        if set(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMP, 1).is_err() {
            tracing::debug!(
                interface = name,
                "SO_TIMESTAMP refused: captures read their own time"
            );
        }

        let frame = align16(libc::TPACKET3_HDRLEN + 16 + snaplen as usize);
        let block_size = (frame + 64)
            .next_power_of_two()
            .max(MIN_BLOCK)
            .max(page_size());
        let blocks = ((buffer_mb as usize) << 20).div_ceil(block_size).max(2);
        let req = libc::tpacket_req3 {
            tp_block_size: block_size as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: frame as u32,
            tp_frame_nr: (block_size / frame * blocks) as u32,
            tp_retire_blk_tov: block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(sock, libc::SOL_PACKET, libc::PACKET_RX_RING, &req).map_err(|()| {
            os_error(&format!(
                "PACKET_RX_RING ({blocks} blocks of {block_size} B)"
            ))
        })?;
        let map_len = block_size * blocks;
        // SAFETY: maps the ring just set up on this socket, whole, shared
        // with the kernel; unmapped in Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                sock,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(os_error("mmap of the ring"));
        }
        Ok(Some(Ring {
            fd,
            map: map.cast(),
            map_len,
            block_size,
            blocks,
            current: 0,
            held: false,
            left: 0,
            next: 0,
            snaplen,
            kernel_drops: 0,
            if_drops_base: interface_drops(name),
            name: name.to_owned(),
            tagged: Vec::new(),
        }))
    }

    pub(super) fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The status word of block `i`, shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: inside the mapping (i < blocks), 4-aligned (blocks are
        // page-aligned); the kernel writes it too, so it is read and
        // written atomically.
        unsafe { AtomicU32::from_ptr(self.map.add(i * self.block_size + BLOCK_STATUS).cast()) }
    }

    /// Reads a u32 of the current block at `at`.
    fn block_u32(&self, at: usize) -> u32 {
        // SAFETY: a block header field, inside the block, 4-aligned.
        unsafe {
            self.map
                .add(self.current * self.block_size + at)
                .cast::<u32>()
                .read()
        }
    }

    /// Whether the kernel has handed over the block the walk waits for.
    fn ready(&self) -> bool {
        self.held || self.status(self.current).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Gives the current block back to the kernel and moves to the next.
    fn release(&mut self) {
        self.status(self.current)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.held = false;
        self.current = (self.current + 1) % self.blocks;
    }

    /// Hands at most `max` packets to `each` (capture time in ns, length
    /// on the wire, captured bytes); how many. 0: none was ready.
    #[inline]
    pub(super) fn burst(&mut self, max: usize, each: &mut dyn FnMut(u64, u32, &[u8])) -> usize {
        let mut n = 0;
        while n < max {
            if !self.held {
                if self.status(self.current).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    break;
                }
                self.held = true;
                self.left = self.block_u32(BLOCK_NUM_PKTS);
                self.next = self.block_u32(BLOCK_FIRST) as usize;
            }
            if self.left == 0 {
                self.release();
                continue;
            }
            let block = self.current * self.block_size;
            let at = self.next;
            if at + std::mem::size_of::<FrameHeader>() > self.block_size {
                // Not from a kernel's ring; never read past the block.
                self.left = 0;
                continue;
            }
            // SAFETY: inside the block (checked above); frames are 8-aligned.
            let frame = unsafe { self.map.add(block + at) };
            // SAFETY: as above.
            let h = unsafe { frame.cast::<FrameHeader>().read() };
            self.left -= 1;
            self.next = at + h.next_offset as usize;
            // The captured bytes, bounded by the block whatever the header says.
            let start = (at + h.mac as usize).min(self.block_size);
            let len = (h.snaplen as usize).min(self.block_size - start);
            // SAFETY: inside the block (bounded above).
            let data = unsafe { std::slice::from_raw_parts(self.map.add(block + start), len) };
            if self.left > 0 {
                prefetch(self.map.wrapping_add(block + self.next));
                if self.left > 1 && self.next + 4 <= self.block_size {
                    // SAFETY: inside the block (checked); 4-aligned.
                    let step = unsafe { self.map.add(block + self.next).cast::<u32>().read() };
                    prefetch(self.map.wrapping_add(block + self.next + step as usize));
                }
            }
            let ts_ns = u64::from(h.sec) * 1_000_000_000 + u64::from(h.nsec);
            if h.status & libc::TP_STATUS_VLAN_VALID != 0 && data.len() >= 12 {
                let tpid = if h.status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    h.vlan_tpid
                } else {
                    libc::ETH_P_8021Q as u16
                };
                let mut tagged = std::mem::take(&mut self.tagged);
                tagged.clear();
                tagged.extend_from_slice(&data[..12]);
                tagged.extend_from_slice(&tpid.to_be_bytes());
                tagged.extend_from_slice(&(h.vlan_tci as u16).to_be_bytes());
                tagged.extend_from_slice(&data[12..]);
                each(ts_ns, h.len + 4, &tagged);
                self.tagged = tagged;
            } else {
                each(ts_ns, h.len, data);
            }
            n += 1;
        }
        n
    }

    /// Waits until the kernel hands over a block, at most `timeout_ms`.
    ///
    /// # Errors
    /// The interface is gone.
    pub(super) fn wait(&mut self, timeout_ms: i32) -> Result<(), String> {
        if self.ready() {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
        if pfd.revents & libc::POLLERR != 0 {
            let mut err = 0i32;
            let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
            // SAFETY: room for an int and its length; reading clears it.
            unsafe {
                libc::getsockopt(
                    self.fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&raw mut err).cast(),
                    &raw mut len,
                )
            };
            let cname = CString::new(self.name.as_str()).unwrap_or_default();
            // SAFETY: a NUL-terminated name.
            if err == libc::ENETDOWN && unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
                return Err(format!("interface {} is gone", self.name));
            }
            if err != 0 {
                tracing::debug!(interface = %self.name, error = %std::io::Error::from_raw_os_error(err), "capture socket error");
                // The interface went down: the ring fills again once it is up.
                std::thread::sleep(std::time::Duration::from_millis(timeout_ms as u64));
            }
        }
        Ok(())
    }

    /// Gives every block the kernel has handed over back unread.
    pub(super) fn discard_ready(&mut self) {
        for _ in 0..self.blocks {
            if !self.ready() {
                break;
            }
            self.release();
        }
    }

    /// Kernel drops (since the ring was opened) and the interface's own.
    pub(super) fn drops(&mut self) -> Drops {
        // SAFETY: a zeroed tpacket_stats_v3 is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: room for the statistics and their length.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut st).cast(),
                &raw mut len,
            )
        };
        if rc == 0 {
            self.kernel_drops += u64::from(st.tp_drops);
        }
        Drops {
            kernel: self.kernel_drops,
            interface: interface_drops(&self.name).saturating_sub(self.if_drops_base),
        }
    }

    /// Attaches the filter `expr` (BPF, for Ethernet) to the socket, or
    /// only the snap length for "".
    ///
    /// # Errors
    /// The expression does not compile.
    pub(super) fn set_filter(&mut self, expr: &str) -> Result<(), String> {
        let snaplen = self.snaplen;
        if expr.is_empty() || tests_vlan_tags(expr) {
            if !expr.is_empty() {
                tracing::info!(interface = %self.name, filter = expr, "a filter on VLAN tags stays in the monitor: the kernel's filter sees packets without their tag");
            }
            return attach(self.fd(), &mut [accept(snaplen)])
                .map_err(|()| format!("SO_ATTACH_FILTER: {}", std::io::Error::last_os_error()));
        }
        let dead = pcap::Capture::dead(pcap::Linktype(libc::ARPHRD_ETHER.into()))
            .map_err(|e| e.to_string())?;
        let program = dead.compile(expr, true).map_err(|e| e.to_string())?;
        let insns = program.get_instructions();
        const _: () = assert!(std::mem::size_of::<pcap::BpfInstruction>() == 8);
        // SAFETY: pcap's BpfInstruction is a transparent `bpf_insn`
        // (u16 code, u8 jt, u8 jf, u32 k), the layout of `sock_filter`.
        let mut code: Vec<libc::sock_filter> = unsafe {
            std::slice::from_raw_parts(insns.as_ptr().cast::<libc::sock_filter>(), insns.len())
        }
        .to_vec();
        for i in &mut code {
            // Accepting returns the length to keep: at most the snap length.
            if i.code == (libc::BPF_RET | libc::BPF_K) as u16 && i.k != 0 {
                i.k = i.k.min(snaplen);
            }
        }
        attach(self.fd(), &mut code)
            .map_err(|()| format!("SO_ATTACH_FILTER: {}", std::io::Error::last_os_error()))
    }

    /// Rejects every packet (while a fan-out group forms).
    pub(super) fn reject_all(&mut self) -> Result<(), ()> {
        attach(self.fd(), &mut [accept(0)])
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

/// Whether a BPF expression tests VLAN tags (which the kernel has taken
/// off the packet before its filter runs).
fn tests_vlan_tags(expr: &str) -> bool {
    expr.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == "vlan" || w == "mpls" || w == "pppoes")
}

/// A filter instruction accepting `snaplen` bytes of a packet.
fn accept(snaplen: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: snaplen,
    }
}

/// Attaches a classic BPF program to socket `fd`.
fn attach(fd: i32, code: &mut [libc::sock_filter]) -> Result<(), ()> {
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

/// `what` failed, with the OS's reason.
fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn set(fd: i32, level: i32, name: i32, value: u32) -> Result<(), ()> {
    setsockopt(fd, level, name, &value)
}

fn setsockopt<T>(fd: i32, level: i32, name: i32, value: &T) -> Result<(), ()> {
    // SAFETY: a value of the option's type, valid for the call (the
    // kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// The interface's hardware type (`ARPHRD_*`).
fn hardware_type(fd: i32, name: &CString) -> Result<u16, String> {
    // SAFETY: a zeroed ifreq is valid; the name is copied in below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err("interface name too long".to_owned());
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid ifreq for SIOCGIFHWADDR.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &raw mut req) };
    if rc != 0 {
        return Err(format!(
            "SIOCGIFHWADDR: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware address.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// Packets the interface itself dropped, as libpcap counts them
/// (`rx_dropped` + `rx_missed_errors`); 0 where unknown.
fn interface_drops(name: &str) -> u64 {
    ["rx_dropped", "rx_missed_errors"]
        .iter()
        .filter_map(|stat| {
            std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/{stat}")).ok()
        })
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .sum()
}

fn page_size() -> usize {
    // SAFETY: no arguments beyond the name.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

fn align16(x: usize) -> usize {
    (x + 15) & !15
}

/// Asks the CPU for a frame's first lines (its header and the start of
/// its packet) while the one before it is analysed: the kernel wrote them
/// on the core that received the packet.
#[inline]
fn prefetch(frame: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for line in [0, 64, 128] {
            // SAFETY: prefetch is a hint; it reads nothing architecturally
            // and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(frame.wrapping_add(line).cast()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_on_vlan_tags_are_told_apart() {
        assert!(tests_vlan_tags("vlan 100 and tcp"));
        assert!(tests_vlan_tags("(udp) or (vlan)"));
        assert!(tests_vlan_tags("mpls"));
        assert!(!tests_vlan_tags("tcp port 80"));
        assert!(!tests_vlan_tags("host vlanhost"));
    }
}
