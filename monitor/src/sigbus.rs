//! Turns a SIGBUS inside a mapped capture file into an error for its
//! reader instead of the death of the monitor.
//!
//! A replay maps its capture file ([`crate::source::ReplaySource`]). When the file is
//! truncated under the map, touching a page past its new end raises SIGBUS,
//! whose default action ends the process — every link and deployment with
//! it. A reader registers its mapping here ([`Guard`]); the handler, for a
//! fault inside a registered mapping, puts a page of zeros over the faulting
//! page (so the load completes) and marks the mapping hit, which the reader
//! checks before it hands a record out. A SIGBUS anywhere else goes to the
//! handler that was there before (wasmtime's, which passes faults outside
//! WebAssembly on to its own predecessor, or the default action).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Mappings guarded at once; a reader that finds none free reads its file
/// in chunks instead.
const SLOTS: usize = 64;

/// One guarded address range, `start..end` (0..0 when free).
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    hit: AtomicBool,
    taken: AtomicBool,
}

static GUARDED: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        hit: AtomicBool::new(false),
        taken: AtomicBool::new(false),
    }
}; SLOTS];

/// The handler before ours, set before ours is installed; `Some(true)`
/// once ours is.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// A registered mapping; unregisters on drop (before the caller unmaps).
pub struct Guard {
    slot: &'static Slot,
}

impl Guard {
    /// Guards `start..start + len`; `None` if the handler could not be
    /// installed or every slot is taken.
    pub fn new(start: *const u8, len: usize) -> Option<Guard> {
        if !*INSTALLED.get_or_init(install) {
            return None;
        }
        let slot = GUARDED.iter().find(|s| {
            s.taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        slot.hit.store(false, Ordering::Relaxed);
        slot.start.store(start as usize, Ordering::Release);
        slot.end.store(start as usize + len, Ordering::Release);
        Some(Guard { slot })
    }

    /// True once a page of the mapping was missing (the file truncated).
    #[inline]
    pub fn hit(&self) -> bool {
        self.slot.hit.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = self.slot;
        s.end.store(0, Ordering::Release);
        s.start.store(0, Ordering::Release);
        s.taken.store(false, Ordering::Release);
    }
}

/// Installs the handler (once); true if it is in place.
fn install() -> bool {
    page_size();
    // SAFETY: plain sigaction calls; PREVIOUS is set before our handler
    // can run.
    unsafe {
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &raw mut previous) != 0 {
            return false;
        }
        PREVIOUS.get_or_init(|| previous);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &raw const action, std::ptr::null_mut()) == 0
    }
}

/// Async-signal-safe: atomics and `mmap` only.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &GUARDED {
        let (start, end) = (
            s.start.load(Ordering::Acquire),
            s.end.load(Ordering::Acquire),
        );
        if start <= addr && addr < end {
            let page = addr & !(page_size() - 1);
            // SAFETY: replaces one page of the reader's own read-only
            // mapping with zeros; nothing else lives there.
            let p = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    page_size(),
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                s.hit.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: as if we had not been installed.
    let Some(&previous) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Put it back; returning re-runs the faulting access under it.
        // SAFETY: sigaction is async-signal-safe.
        unsafe { libc::sigaction(sig, &raw const previous, std::ptr::null_mut()) };
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, context);
    } else {
        // SAFETY: a plain handler has this signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

/// The page size (4 KB on x86-64 Linux; asked once, before any fault).
pub fn page_size() -> usize {
    static SIZE: AtomicUsize = AtomicUsize::new(0);
    match SIZE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: a plain libc call (made first in `install`, not in
            // the handler).
            let n = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            SIZE.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}
