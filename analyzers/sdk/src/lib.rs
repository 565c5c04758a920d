//! Guest SDK for analyzers.
//!
//! Implement [`Analyzer`] and call [`export_analyzer!`] once; the macro
//! generates every ABI v1 export (see `tm-abi`). Parameters and results are
//! serde types, MessagePack on the wire with field names.
//!
//! ```ignore
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default)]
//! struct Params { top_n: u32 }
//!
//! struct Counter { packets: u64 }
//!
//! impl tm_sdk::Analyzer for Counter {
//!     type Params = Params;
//!     type Results = u64;
//!     fn init(_: Params) -> Result<Self, String> { Ok(Counter { packets: 0 }) }
//!     fn on_packet(&mut self, _: &tm_sdk::Packet) { self.packets += 1 }
//!     fn configure(&mut self, _: Params) -> Result<(), String> { Ok(()) }
//!     fn results(&self) -> u64 { self.packets }
//! }
//! tm_sdk::export_analyzer!(Counter);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use serde;
pub use table::FlowTable;
pub use view::{ip, Direction, FlowKey, Fx, FxHashMap, FxHashSet, Tcp, Window};

mod table;
mod view;
pub use tm_abi as abi;
use tm_abi::{PacketHeader, Records, Status, NO_OFFSET};
pub use tm_guest_rt::rt::{decode_params, Level};

/// One packet as the host delivers it: its parsed header and captured bytes.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// The host's parsed view.
    pub header: PacketHeader,
    /// Captured bytes (at most the snap length).
    pub data: &'a [u8],
}

fn addr(version: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match version {
        4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

impl<'a> Packet<'a> {
    /// Source IP address, if the packet is IP.
    pub fn src_ip(&self) -> Option<IpAddr> {
        addr(self.header.ip_version, &self.header.src_addr)
    }

    /// Destination IP address, if the packet is IP.
    pub fn dst_ip(&self) -> Option<IpAddr> {
        addr(self.header.ip_version, &self.header.dst_addr)
    }

    /// The L4 payload (TCP/UDP data), empty if there is none or it was not captured.
    pub fn payload(&self) -> &'a [u8] {
        let at = self.header.payload_offset;
        if at == NO_OFFSET {
            return &[];
        }
        self.data.get(at as usize..).unwrap_or(&[])
    }

    /// True if the host could not fully parse the packet.
    pub fn parse_error(&self) -> bool {
        self.header.flags & abi::flag::PARSE_ERROR != 0
    }
}

/// An analyzer: state built from parameters, fed packets, asked for results.
pub trait Analyzer: Sized {
    /// Parameters for `init` and `configure`. Absent params decode as an
    /// empty map, so `#[serde(default)]` gives every field a default.
    type Params: serde::de::DeserializeOwned;
    /// What `results` returns; encoded as MessagePack with field names.
    type Results: serde::Serialize;

    /// Builds the analyzer; an `Err` names the bad parameter.
    fn init(params: Self::Params) -> Result<Self, String>;
    /// Called for each packet of each batch, in capture order per link.
    fn on_packet(&mut self, packet: &Packet);
    /// True if [`Analyzer::prepare`] does something (then each batch is
    /// walked twice).
    const PREPARES: bool = false;
    /// Sees the record header of every packet of a batch (the raw ABI
    /// bytes) before `on_packet` gets the first: the place to touch the
    /// table entries the batch will update ([`FlowTable::touch_record`]),
    /// so their memory loads overlap instead of waiting one after another.
    /// Must change nothing; the default does nothing.
    #[inline]
    fn prepare(&self, _record: &[u8; abi::RECORD_HEADER_LEN]) {}
    /// Periodic timer (Unix ns); expire idle state here.
    fn tick(&mut self, _now_ns: u64) {}
    /// New parameters while running; state is kept. An `Err` leaves the
    /// old parameters in place.
    fn configure(&mut self, params: Self::Params) -> Result<(), String>;
    /// Current results; must not reset state.
    fn results(&self) -> Self::Results;
    /// State to save for a restart, as MessagePack ([`encode_state`] does it
    /// for any serde type); `None` keeps nothing (the default).
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }
    /// Takes back what [`Analyzer::snapshot`] saved, after `init` with the
    /// same parameters: a state of [`Analyzer::STATE_VERSION`], saved by
    /// this module or another build of it (a restart, or an upgrade from
    /// the running module to this one).
    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        Err("this analyzer does not restore state".into())
    }
    /// The version of the form [`Analyzer::snapshot`] saves; the SDK keeps
    /// it beside the state. Raise it when that form changes: a module then
    /// refuses a state newer than its own cleanly (the host answers
    /// `state_version` and the running analyzer goes on), and takes older
    /// ones only from [`Analyzer::OLDEST_STATE_VERSION`] on, through
    /// [`Analyzer::restore_older`].
    const STATE_VERSION: u32 = 1;
    /// The oldest saved state version [`Analyzer::restore_older`] converts.
    const OLDEST_STATE_VERSION: u32 = Self::STATE_VERSION;
    /// Takes back a state saved by an older build, `version` between
    /// [`Analyzer::OLDEST_STATE_VERSION`] and [`Analyzer::STATE_VERSION`]
    /// (excluded). The default refuses.
    fn restore_older(&mut self, version: u32, _state: &[u8]) -> Result<(), String> {
        Err(format!("no conversion from state version {}", version))
    }
    /// The most captured bytes of each packet this analyzer reads, asked
    /// once right after `init`; the host cuts every packet to it, so
    /// batches are smaller and copied faster. `0`: the parsed header alone
    /// ([`PacketHeader`](abi::PacketHeader): addresses, ports, flags,
    /// lengths). The default, `u32::MAX`, is every byte captured.
    fn snap_len(&self) -> u32 {
        u32::MAX
    }
    /// The results of the last [`Analyzer::results`] went out in a
    /// published window (periodic, or the final one at an unload), which
    /// the results stream keeps: the place to drop what only that window
    /// had to carry (ended flow records, say), so each is published once.
    /// A `collect` a manager asks for is not published and is not followed
    /// by this call. The default does nothing.
    fn published(&mut self) {}
    /// The deployment is being unloaded: the final [`Analyzer::results`]
    /// follow, then nothing. The place to close what is still open (flows
    /// that have not ended, say). The default does nothing.
    fn finish(&mut self) {}
}

/// Hands the `count` records of a batch to `analyzer`, one by one in
/// order, as the exports do (native builds and tests call it too). Stops
/// at the first malformed record.
#[inline]
pub fn feed<A: Analyzer>(analyzer: &mut A, buf: &[u8], count: u32) {
    if A::PREPARES {
        // Four records a turn: a WebAssembly runtime checks its deadline at
        // every loop head (and keeps values out of registers around the
        // check), and this loop does little else. Measured: 3-4% of the
        // guest's time; eight a turn was slower again.
        let mut it = abi::RecordHeaders::new(buf, count);
        'batch: loop {
            for _ in 0..4 {
                match it.next() {
                    Some(h) => analyzer.prepare(h),
                    None => break 'batch,
                }
            }
        }
    }
    // Two a turn, for the same reason (3% more; four gained nothing).
    let mut it = Records::new(buf, count);
    'main: loop {
        for _ in 0..2 {
            match it.next() {
                Some((header, data)) => analyzer.on_packet(&Packet { header, data }),
                None => break 'main,
            }
        }
    }
}

/// Derives [`Analyzer::snapshot`] and [`Analyzer::restore`] from the
/// analyzer's own serde derives: the whole state is saved, and restored in
/// place of the freshly initialised one. Put it inside `impl Analyzer for
/// T` when `T: Serialize + Deserialize`:
///
/// ```ignore
/// impl tm_sdk::Analyzer for Counter {
///     // ...
///     tm_sdk::snapshot_from_serde!();
/// }
/// ```
#[macro_export]
macro_rules! snapshot_from_serde {
    () => {
        fn snapshot(&self) -> Option<Vec<u8>> {
            $crate::encode_state(self)
        }
        fn restore(&mut self, state: &[u8]) -> Result<(), String> {
            *self = $crate::decode_state(state)?;
            Ok(())
        }
    };
}

/// The saved form of a MessagePack `state` of `version`:
/// `{"tm_state_version": version, "state": state}`, the state left as it
/// is so the host (and a person reading a snapshot) sees its fields.
pub fn save_versioned(version: u32, state: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(state.len() + 32);
    rmp::encode::write_map_len(&mut out, 2).ok()?;
    rmp::encode::write_str(&mut out, "tm_state_version").ok()?;
    rmp::encode::write_uint(&mut out, u64::from(version)).ok()?;
    rmp::encode::write_str(&mut out, "state").ok()?;
    out.extend_from_slice(state);
    Some(out)
}

/// A saved state's version and state; a state saved without a version (by
/// an SDK before versions) is version 1.
pub fn saved_version(saved: &[u8]) -> (u32, &[u8]) {
    versioned(saved).unwrap_or((1, saved))
}

/// `{"tm_state_version": u32, "state": …}` in that order, taken apart.
fn versioned(saved: &[u8]) -> Option<(u32, &[u8])> {
    let mut rd = saved;
    if rmp::decode::read_map_len(&mut rd).ok()? != 2 {
        return None;
    }
    let (key, mut rd) = rmp::decode::read_str_from_slice(rd).ok()?;
    if key != "tm_state_version" {
        return None;
    }
    let version = rmp::decode::read_int::<u32, _>(&mut rd).ok()?;
    let (key, rd) = rmp::decode::read_str_from_slice(rd).ok()?;
    if key != "state" || rd.is_empty() {
        return None;
    }
    Some((version, rd))
}

/// Encodes state for [`Analyzer::snapshot`].
pub fn encode_state<T: serde::Serialize>(state: &T) -> Option<Vec<u8>> {
    rmp_serde::to_vec_named(state).ok()
}

/// Decodes state for [`Analyzer::restore`].
pub fn decode_state<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("bad saved state: {}", e))
}

/// Host imports beyond `log` and `now` (`tm-guest-rt` has those).
#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "tm")]
    extern "C" {
        pub fn emit(ptr: *const u8, len: u32) -> u32;
    }
}

/// Writes a line to the monitor's log (rate-limited by the host).
pub fn log(level: Level, message: &str) {
    tm_guest_rt::rt::log(level, message)
}

/// The host's clock, Unix ns (0 outside WebAssembly).
pub fn now_ns() -> u64 {
    tm_guest_rt::rt::now_ns().unwrap_or(0)
}

/// Publishes an alert event at once (an `Event` of kind `alert` whose
/// `data` is `alert`). Returns false if the host refused it (rate limit).
pub fn emit<T: serde::Serialize>(alert: &T) -> bool {
    let bytes = match rmp_serde::to_vec_named(alert) {
        Ok(b) => b,
        Err(_) => return false,
    };
    #[cfg(target_arch = "wasm32")]
    unsafe {
        host::emit(bytes.as_ptr(), bytes.len() as u32) == 0
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = bytes;
        true
    }
}

/// The runtime behind the exports; used by [`export_analyzer!`] only.
#[doc(hidden)]
pub mod rt {
    use super::*;
    pub use tm_guest_rt::rt::alloc;
    use tm_guest_rt::rt::take_buffer;

    /// Guest state: the analyzer, the last output and the last error.
    pub struct Slot<A>(tm_guest_rt::rt::Slot<A>);

    impl<A: Analyzer> Default for Slot<A> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<A: Analyzer> Slot<A> {
        /// An empty slot.
        pub const fn new() -> Self {
            Slot(tm_guest_rt::rt::Slot::new())
        }

        /// `tm_init`
        pub fn init(&self, ptr: u32, len: u32) -> u32 {
            let bytes = take_buffer(ptr, len);
            let state = self.0.get();
            match decode_params::<A::Params>(&bytes).and_then(A::init) {
                Ok(a) => {
                    state.guest = Some(a);
                    Status::Ok as u32
                }
                Err(e) => state.fail(Status::BadParams, e),
            }
        }

        /// `tm_configure`
        pub fn configure(&self, ptr: u32, len: u32) -> u32 {
            let bytes = take_buffer(ptr, len);
            let state = self.0.get();
            let result = match state.guest.as_mut() {
                Some(a) => decode_params::<A::Params>(&bytes).and_then(|p| a.configure(p)),
                None => return state.fail(Status::Failed, "configure before init".into()),
            };
            state.status(result, Status::BadParams)
        }

        /// `tm_on_packets`
        pub fn on_packets(&self, ptr: u32, len: u32, count: u32) -> u32 {
            let state = self.0.get();
            let analyzer = match state.guest.as_mut() {
                Some(a) => a,
                None => return state.fail(Status::Failed, "packets before init".into()),
            };
            // The host owns this buffer and keeps it alive across calls.
            let buf =
                unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
            feed(analyzer, buf, count);
            Status::Ok as u32
        }

        /// `tm_tick`
        pub fn tick(&self, now_ns: u64) -> u32 {
            let state = self.0.get();
            match state.guest.as_mut() {
                Some(a) => {
                    a.tick(now_ns);
                    Status::Ok as u32
                }
                None => state.fail(Status::Failed, "tick before init".into()),
            }
        }

        /// `tm_collect`
        pub fn collect(&self) -> u64 {
            let state = self.0.get();
            let encoded = match state.guest.as_ref() {
                Some(a) => rmp_serde::to_vec_named(&a.results()),
                None => return 0,
            };
            match encoded {
                Ok(bytes) => state.output(bytes),
                Err(e) => {
                    state.fail(Status::Failed, format!("cannot encode results: {}", e));
                    0
                }
            }
        }

        /// `tm_snapshot`: packed MessagePack state, or 0 for none.
        pub fn snapshot(&self) -> u64 {
            let state = self.0.get();
            let saved = state
                .guest
                .as_ref()
                .and_then(|a| a.snapshot())
                .and_then(|bytes| save_versioned(A::STATE_VERSION, &bytes));
            match saved {
                Some(bytes) => state.output(bytes),
                None => 0,
            }
        }

        /// `tm_restore`
        pub fn restore(&self, ptr: u32, len: u32) -> u32 {
            let bytes = take_buffer(ptr, len);
            let state = self.0.get();
            let (version, saved) = saved_version(&bytes);
            if version > A::STATE_VERSION || version < A::OLDEST_STATE_VERSION {
                let why = if version > A::STATE_VERSION {
                    format!(
                        "the saved state's version {} is newer than this module's ({})",
                        version,
                        A::STATE_VERSION
                    )
                } else {
                    format!(
                        "the saved state's version {} is older than this module takes (from {})",
                        version,
                        A::OLDEST_STATE_VERSION
                    )
                };
                return state.fail(Status::StateVersion, why);
            }
            let result = match state.guest.as_mut() {
                Some(a) if version == A::STATE_VERSION => a.restore(saved),
                Some(a) => a.restore_older(version, saved),
                None => return state.fail(Status::Failed, "restore before init".into()),
            };
            state.status(result, Status::Failed)
        }

        /// `tm_snap_len`
        pub fn snap_len(&self) -> u32 {
            self.0
                .get()
                .guest
                .as_ref()
                .map_or(u32::MAX, |a| a.snap_len())
        }

        /// `tm_published`
        pub fn published(&self) -> u32 {
            let state = self.0.get();
            match state.guest.as_mut() {
                Some(a) => {
                    a.published();
                    Status::Ok as u32
                }
                None => state.fail(Status::Failed, "published before init".into()),
            }
        }

        /// `tm_finish`
        pub fn finish(&self) -> u32 {
            let state = self.0.get();
            match state.guest.as_mut() {
                Some(a) => {
                    a.finish();
                    Status::Ok as u32
                }
                None => state.fail(Status::Failed, "finish before init".into()),
            }
        }

        /// `tm_last_error`
        pub fn last_error(&self) -> u64 {
            self.0.last_error()
        }
    }
}

/// Generates the ABI v1 exports for an [`Analyzer`] type.
#[macro_export]
macro_rules! export_analyzer {
    ($analyzer:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __tm_exports {
            use super::*;
            static SLOT: $crate::rt::Slot<$analyzer> = $crate::rt::Slot::new();

            #[no_mangle]
            pub extern "C" fn tm_abi_version() -> u32 {
                $crate::abi::ABI_VERSION
            }
            #[no_mangle]
            pub extern "C" fn tm_alloc(len: u32) -> u32 {
                $crate::rt::alloc(len)
            }
            #[no_mangle]
            pub extern "C" fn tm_init(ptr: u32, len: u32) -> u32 {
                SLOT.init(ptr, len)
            }
            #[no_mangle]
            pub extern "C" fn tm_on_packets(ptr: u32, len: u32, count: u32) -> u32 {
                SLOT.on_packets(ptr, len, count)
            }
            #[no_mangle]
            pub extern "C" fn tm_tick(now_ns: u64) -> u32 {
                SLOT.tick(now_ns)
            }
            #[no_mangle]
            pub extern "C" fn tm_configure(ptr: u32, len: u32) -> u32 {
                SLOT.configure(ptr, len)
            }
            #[no_mangle]
            pub extern "C" fn tm_collect() -> u64 {
                SLOT.collect()
            }
            #[no_mangle]
            pub extern "C" fn tm_snapshot() -> u64 {
                SLOT.snapshot()
            }
            #[no_mangle]
            pub extern "C" fn tm_restore(ptr: u32, len: u32) -> u32 {
                SLOT.restore(ptr, len)
            }
            #[no_mangle]
            pub extern "C" fn tm_snap_len() -> u32 {
                SLOT.snap_len()
            }
            #[no_mangle]
            pub extern "C" fn tm_published() -> u32 {
                SLOT.published()
            }
            #[no_mangle]
            pub extern "C" fn tm_finish() -> u32 {
                SLOT.finish()
            }
            #[no_mangle]
            pub extern "C" fn tm_last_error() -> u64 {
                SLOT.last_error()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Records what `feed` hands it.
    #[derive(Default)]
    struct Seen {
        prepared: Cell<Vec<u32>>,
        packets: Vec<u32>,
    }

    impl Analyzer for Seen {
        type Params = ();
        type Results = ();
        fn init(_: ()) -> Result<Self, String> {
            Ok(Seen::default())
        }
        const PREPARES: bool = true;
        fn prepare(&self, record: &[u8; abi::RECORD_HEADER_LEN]) {
            let mut v = self.prepared.take();
            v.push(PacketHeader::from_bytes(record).wire_len);
            self.prepared.set(v);
        }
        fn on_packet(&mut self, p: &Packet) {
            assert_eq!(p.data.len() as u32, p.header.cap_len);
            self.packets.push(p.header.wire_len);
        }
        fn configure(&mut self, _: ()) -> Result<(), String> {
            Ok(())
        }
        fn results(&self) {}
    }

    /// `n` records (wire_len 1000 + i, i + 1 captured bytes) back to back.
    fn batch(n: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        for i in 0..n {
            let data = vec![i as u8; i as usize + 1];
            let h = PacketHeader {
                wire_len: 1000 + i,
                cap_len: data.len() as u32,
                ..PacketHeader::default()
            };
            at += h.write_record(&data, &mut buf[at..]).unwrap();
        }
        buf.truncate(at);
        buf
    }

    #[test]
    fn feed_hands_over_every_record_once_up_to_count() {
        // Every count around the unrolled loops' turns (4 and 2 a turn).
        for n in 0..12u32 {
            let buf = batch(n);
            for count in 0..=n + 2 {
                let mut a = Seen::default();
                feed(&mut a, &buf, count);
                let want: Vec<u32> = (0..count.min(n)).map(|i| 1000 + i).collect();
                assert_eq!(a.packets, want, "{n} records, count {count}");
                assert_eq!(a.prepared.take(), want, "{n} records, count {count}");
            }
        }
    }

    #[test]
    fn saved_states_carry_their_version_and_unversioned_ones_are_version_1() {
        let state = encode_state(&(7u64, "flows")).unwrap();
        let saved = save_versioned(3, &state).unwrap();
        assert_eq!(saved_version(&saved), (3, &state[..]));
        // One MessagePack map the host can hold, the state's fields in it.
        assert_eq!(saved[0], 0x82);
        assert!(saved.ends_with(&state));
        // A state saved before versions (a plain MessagePack value).
        assert_eq!(saved_version(&state), (1, &state[..]));
        let (v, bytes) = saved_version(&saved);
        let back: (u64, String) = decode_state(bytes).unwrap();
        assert_eq!((v, back), (3, (7, "flows".to_string())));
    }

    #[test]
    fn feed_stops_at_the_first_malformed_record() {
        let mut buf = batch(9);
        // Record 5's length field disagrees with its cap_len.
        let mut at = 0;
        for _ in 0..5 {
            at += u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        }
        buf[at] ^= 0x40;
        let mut a = Seen::default();
        feed(&mut a, &buf, 9);
        let want: Vec<u32> = (0..5).map(|i| 1000 + i).collect();
        assert_eq!(a.packets, want);
        assert_eq!(a.prepared.take(), want);
    }
}
