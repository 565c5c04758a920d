//! Reading capture files for replay.
//!
//! A classic pcap file (its header decoded by `pcap-file`) is mapped and
//! its records are handed out in place, with no copy out of the page cache.
//! Ahead of the reader the map's page tables are filled a window at a time
//! ([`POPULATE_AHEAD`]) and, when records are long, every cache line of the
//! next [`PREFETCH_AHEAD`] bytes is prefetched (the processor's own
//! prefetcher does not follow records a kilobyte apart); behind it the
//! pages read are unmapped every [`DROP_STEP`], so the resident memory does
//! not grow with the file. Against reading in 128 KB chunks (the pinned
//! monitor's CPU, BENCHMARKS.md, flow-stats section): 0.82× on small packets and
//! 0.65× on full-size ones with the file cached as a read from disk leaves
//! it (large folios), 0.93× and 1.06× with the file in 4 KB pages. A file
//! truncated under the map would raise SIGBUS; [`crate::sigbus`] turns that
//! into a "truncated" error for the reader (at most the record the cut
//! falls in may reach the link with zeros for its lost bytes). Where the
//! file cannot be mapped, or every guard slot is taken, it is read in
//! 128 KB chunks into one reused buffer instead. Anything else libpcap
//! reads (pcapng) goes through libpcap.
//!
//! A file that grows while it is replayed is read up to the length it had
//! when opened; one truncated meanwhile ends with a "truncated" error.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use pcap_file::pcap::PcapParser;

use crate::sigbus;

/// One record: timestamp (ns), length on the wire, captured bytes.
pub type Record<'a> = (u64, u32, &'a [u8]);

/// A capture file being read.
pub enum FileReader {
    /// A classic pcap file, read in chunks.
    Classic(ClassicPcap),
    /// Whatever else libpcap reads.
    Libpcap(pcap::Capture<pcap::Offline>),
}

/// A classic pcap file's header; the first record follows it.
const FILE_HEADER_LEN: u64 = 24;

/// Bytes read from the file at a time (the buffer grows for a record
/// longer than this).
const CHUNK: usize = 128 << 10;

/// Longest record accepted unless the file's snap length is longer, as
/// libpcap does (its largest snap length for most link types): a longer
/// one is a corrupt length field, not a packet to read into memory.
const MAX_RECORD: u32 = 262_144;

/// The largest snap length a file's header is believed (libpcap's largest,
/// for D-Bus captures): a header claiming more is corrupt too.
const MAX_SNAPLEN: u32 = 128 << 20;

/// Mapped bytes read are unmapped again every this many bytes.
pub const DROP_STEP: usize = 1 << 20;

/// How far ahead of the reader the map's page tables are filled, a window
/// at a time (`MADV_POPULATE_READ`): one call instead of a fault per 64 KB
/// when the file is cached in 4 KB pages, and the prefetches ahead then
/// land in mapped pages.
pub const POPULATE_AHEAD: usize = 1 << 20;

/// Records at least this long (header included) have the file ahead of
/// them prefetched.
const PREFETCH_FROM: usize = 512;

/// How far ahead of the reader the file is prefetched.
pub const PREFETCH_AHEAD: usize = 16 << 10;

/// How a classic pcap file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Mapped where it can be, else in chunks.
    Mapped,
    /// In chunks through a reused buffer.
    Chunks,
}

/// A classic pcap file, mapped or read through a reused buffer.
pub struct ClassicPcap {
    file: File,
    /// The chunks' buffer (empty when mapped).
    buf: Vec<u8>,
    /// The mapping, when mapped.
    map: Option<Mapped>,
    /// `bytes()[head..tail]`: read, not yet handed out.
    head: usize,
    tail: usize,
    /// File offset of `bytes()[0]` (0 when mapped).
    buf_at: u64,
    /// The file's length when opened: nothing after it is read.
    end: u64,
    /// Longest captured length accepted.
    max_record: u32,
    big_endian: bool,
    nano: bool,
    dlt: i32,
}

impl FileReader {
    /// Opens `path`: mapped (or in chunks) if it is a classic pcap file,
    /// else with libpcap.
    ///
    /// # Errors
    /// A message naming the file if it cannot be opened or is no capture.
    pub fn open(path: &Path) -> Result<FileReader, String> {
        FileReader::open_as(path, Reading::Mapped)
    }

    /// Opens `path`, a classic pcap file read as `reading` says.
    ///
    /// # Errors
    /// As [`FileReader::open`].
    pub fn open_as(path: &Path, reading: Reading) -> Result<FileReader, String> {
        let fail = |e: String| format!("cannot open {}: {e}", path.display());
        let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
        let end = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        if file.read_exact(&mut header).is_ok()
            && let Ok((_, parser)) = PcapParser::new(&header[..])
        {
            let h = parser.header();
            let map = match reading {
                Reading::Mapped => Mapped::new(&file, end),
                Reading::Chunks => None,
            };
            return Ok(FileReader::Classic(ClassicPcap {
                nano: h.ts_resolution == pcap_file::TsResolution::NanoSecond,
                dlt: u32::from(h.datalink) as i32,
                file,
                buf: if map.is_some() {
                    Vec::new()
                } else {
                    vec![0; CHUNK]
                },
                head: if map.is_some() {
                    FILE_HEADER_LEN as usize
                } else {
                    0
                },
                tail: map.as_ref().map_or(0, |m| m.len),
                buf_at: if map.is_some() { 0 } else { FILE_HEADER_LEN },
                map,
                end,
                max_record: MAX_RECORD.max(h.snaplen.min(MAX_SNAPLEN)),
                big_endian: h.endianness == pcap_file::Endianness::Big,
            }));
        }
        drop(file);
        pcap::Capture::from_file_with_precision(path, pcap::Precision::Nano)
            .map(FileReader::Libpcap)
            .map_err(|e| fail(e.to_string()))
    }

    /// True if the file is read through a map.
    #[must_use]
    pub fn is_mapped(&self) -> bool {
        matches!(self, FileReader::Classic(ClassicPcap { map: Some(_), .. }))
    }

    /// The file's link type (DLT).
    #[must_use]
    pub fn dlt(&self) -> i32 {
        match self {
            FileReader::Classic(c) => c.dlt,
            FileReader::Libpcap(cap) => cap.get_datalink().0,
        }
    }

    /// The next record; `None` at the end of the file.
    ///
    /// # Errors
    /// A record that cannot be read (a truncated or corrupt file).
    #[inline]
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, String> {
        match self {
            FileReader::Classic(c) => c.next_record(),
            FileReader::Libpcap(cap) => match cap.next_packet() {
                Ok(p) => Ok(Some((
                    super::timeval_ns(&p.header.ts, true),
                    p.header.len,
                    p.data,
                ))),
                Err(pcap::Error::NoMorePackets) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Back to the first record (a looped replay's next round).
    ///
    /// # Errors
    /// If the file cannot be read again.
    pub fn rewind(&mut self, path: &Path) -> Result<(), String> {
        match self {
            FileReader::Classic(c) => c.rewind().map_err(|e| format!("{}: {e}", path.display())),
            FileReader::Libpcap(_) => {
                *self = FileReader::open(path)?;
                Ok(())
            }
        }
    }
}

/// A classic pcap file mapped read-only, guarded against its truncation.
struct Mapped {
    ptr: *const u8,
    len: usize,
    /// Unregistered in `drop` before the unmapping.
    guard: std::mem::ManuallyDrop<sigbus::Guard>,
    /// Pages below this offset were handed back.
    dropped_to: usize,
    /// Lines below this offset were prefetched.
    prefetched_to: usize,
    /// Page tables below this offset were filled.
    populated_to: usize,
}

// SAFETY: the mapping is read-only and owned by one reader at a time.
unsafe impl Send for Mapped {}

impl Mapped {
    /// Maps `file`'s first `len` bytes; `None` if it cannot be mapped or
    /// guarded (the caller reads in chunks then).
    fn new(file: &File, len: u64) -> Option<Mapped> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n > FILE_HEADER_LEN as usize)?;
        // SAFETY: a fresh read-only shared mapping of an open file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        let Some(guard) = sigbus::Guard::new(ptr.cast(), len) else {
            // SAFETY: the mapping just made, not yet shared.
            unsafe { libc::munmap(ptr, len) };
            return None;
        };
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Some(Mapped {
            ptr: ptr.cast(),
            len,
            guard: std::mem::ManuallyDrop::new(guard),
            dropped_to: 0,
            prefetched_to: 0,
            populated_to: 0,
        })
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes, alive as long as `self`. A page the
        // file lost since faults once, into `sigbus`'s page of zeros.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// After the record at `start..end` was located: makes sure its bytes
    /// are the file's (not a truncated file's zeros), prefetches ahead of
    /// long records and hands back the pages behind.
    #[inline]
    fn advance(&mut self, start: usize, end: usize) -> Result<(), String> {
        // The header was read. If the record ends on a later page, touch
        // its last byte: a page the file lost faults now, before the record
        // is handed out (truncation cuts a suffix, so the pages between are
        // there if the last one is). `end > start`: a record has a header.
        // 4 KB, the smallest page: larger ones only touch more often.
        if (start ^ (end - 1)) >= 4096 {
            // SAFETY: `end <= len`, checked by the caller.
            unsafe { std::ptr::read_volatile(self.ptr.add(end - 1)) };
        }
        if self.guard.hit() {
            return Err(format!(
                "the file was truncated during the replay; the record at offset {start} is gone"
            ));
        }
        if end + POPULATE_AHEAD > self.populated_to {
            self.populate(end);
        }
        if end - start >= PREFETCH_FROM {
            self.prefetch(end);
        }
        // At least DROP_STEP past: `drop_behind` then has whole pages to
        // hand back, whatever the page size (no page-size load per record).
        if start - self.dropped_to >= DROP_STEP {
            self.drop_behind(start);
        }
        Ok(())
    }

    /// Fills the page tables of the next window (errors ignored: an old
    /// kernel without `MADV_POPULATE_READ` faults the pages in as they are
    /// read; a truncated file is the guard's business).
    #[inline(never)]
    fn populate(&mut self, end: usize) {
        let from = self.populated_to.max(end & !(sigbus::page_size() - 1));
        let until = (from + POPULATE_AHEAD).min(self.len);
        if until > from {
            // SAFETY: advice on whole pages of our own mapping.
            unsafe {
                libc::madvise(
                    self.ptr.add(from) as *mut libc::c_void,
                    until - from,
                    libc::MADV_POPULATE_READ,
                )
            };
        }
        self.populated_to = until.max(self.populated_to);
    }

    #[inline]
    fn prefetch(&mut self, from: usize) {
        let until = (from + PREFETCH_AHEAD).min(self.len);
        let mut at = self.prefetched_to.max(from);
        while at < until {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch of a mapped address; it never faults.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(self.ptr.add(at).cast());
            }
            at += 64;
        }
        self.prefetched_to = at;
    }

    /// Unmaps the pages wholly before `start` (the file stays cached).
    #[inline(never)]
    fn drop_behind(&mut self, start: usize) {
        let upto = start & !(sigbus::page_size() - 1);
        if upto > self.dropped_to {
            // SAFETY: whole pages of our own mapping that no record handed
            // out still points into (only the current one is alive).
            unsafe {
                libc::madvise(
                    self.ptr.add(self.dropped_to) as *mut libc::c_void,
                    upto - self.dropped_to,
                    libc::MADV_DONTNEED,
                )
            };
            self.dropped_to = upto;
        }
    }

    fn rewind(&mut self) {
        self.dropped_to = 0;
        self.prefetched_to = 0;
        self.populated_to = 0;
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; then our mapping is unmapped (no
        // record outlives the reader).
        unsafe {
            std::mem::ManuallyDrop::drop(&mut self.guard);
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

impl ClassicPcap {
    /// The bytes `head` and `tail` index.
    #[inline]
    fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => m.bytes(),
            None => &self.buf,
        }
    }

    fn rewind(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        if let Some(m) = &mut self.map {
            m.rewind();
            self.head = FILE_HEADER_LEN as usize;
            return Ok(());
        }
        self.file.seek(SeekFrom::Start(FILE_HEADER_LEN))?;
        self.buf_at = FILE_HEADER_LEN;
        self.head = 0;
        self.tail = 0;
        Ok(())
    }

    /// Reads more of the file after `buf[..tail]`, first moving what is
    /// left to the front; `false` at the file's (opening) length. Kept
    /// out of line: `next_record`, inlined into the link thread's loop,
    /// stays small.
    #[inline(never)]
    fn refill(&mut self) -> Result<bool, String> {
        if self.map.is_some() {
            // The whole file (as long as it was when opened) is there.
            return Ok(false);
        }
        self.buf.copy_within(self.head..self.tail, 0);
        self.buf_at += self.head as u64;
        self.tail -= self.head;
        self.head = 0;
        if self.tail == self.buf.len() {
            // A record longer than the buffer (at most MAX_RECORD + 16).
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let left = self.end - (self.buf_at + self.tail as u64);
        let room = (self.buf.len() - self.tail).min(usize::try_from(left).unwrap_or(usize::MAX));
        if room == 0 {
            return Ok(false);
        }
        loop {
            match self.file.read(&mut self.buf[self.tail..self.tail + room]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.tail += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "reading at offset {}: {e}",
                        self.buf_at + self.tail as u64
                    ));
                }
            }
        }
    }

    #[inline]
    fn next_record(&mut self) -> Result<Option<Record<'_>>, String> {
        let Some((ts_ns, wire_len, data_at, end)) = self.locate()? else {
            return Ok(None);
        };
        Ok(Some((ts_ns, wire_len, &self.bytes()[data_at..end])))
    }

    /// When mapped: the error for a file now shorter than the map.
    #[cold]
    fn shrunk(&self, at: u64) -> Option<String> {
        let mapped = self.map.as_ref()?.len as u64;
        let now = self.file.metadata().ok()?.len();
        (now < mapped).then(|| {
            format!(
                "the file was truncated during the replay (to {now} bytes); the record at offset {at} is gone"
            )
        })
    }

    /// The next record's timestamp, wire length and where its bytes lie
    /// in `bytes()`.
    #[inline]
    fn locate(&mut self) -> Result<Option<(u64, u32, usize, usize)>, String> {
        loop {
            let at = self.buf_at + self.head as u64;
            let rest = &self.bytes()[self.head..self.tail];
            // The record header: seconds, fraction, captured and wire
            // lengths, in the file's byte order (read here directly: it
            // is a quarter of the link thread's per-packet reading).
            let header = rest.first_chunk::<16>().map(|h| {
                let w = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                let words = [w(0), w(4), w(8), w(12)];
                if self.big_endian {
                    words.map(u32::swap_bytes)
                } else {
                    words
                }
            });
            let empty = rest.is_empty();
            if let Some([sec, frac, cap, wire_len]) = header {
                if cap > self.max_record {
                    if let Some(e) = self.shrunk(at) {
                        return Err(e);
                    }
                    return Err(format!(
                        "record at offset {at}: captured length {cap} is over the largest this capture holds ({})",
                        self.max_record
                    ));
                }
                let data_at = self.head + 16;
                let end = data_at + cap as usize;
                if end <= self.tail {
                    if let Some(m) = &mut self.map {
                        m.advance(self.head, end)?;
                        // The bytes after a truncation's cut, on the page
                        // it falls in, read as zeros (no fault): a record
                        // of no length is where a shrunk file shows.
                        if wire_len == 0
                            && let Some(e) = self.shrunk(at)
                        {
                            return Err(e);
                        }
                    }
                    self.head = end;
                    let frac = u64::from(frac);
                    let ts_ns =
                        u64::from(sec) * 1_000_000_000 + if self.nano { frac } else { frac * 1000 };
                    return Ok(Some((ts_ns, wire_len, data_at, end)));
                }
            }
            if !self.refill()? {
                if empty {
                    return Ok(None);
                }
                return Err(format!(
                    "truncated dump file; the last record at offset {at} is incomplete"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic pcap file: header, then records `(sec, frac, bytes, wire)`.
    fn pcap(nano: bool, records: &[(u32, u32, &[u8], u32)]) -> Vec<u8> {
        let mut f = Vec::new();
        let magic: u32 = if nano { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        f.extend_from_slice(&magic.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&96u32.to_le_bytes()); // snap length
        f.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
        for (sec, frac, bytes, wire) in records {
            f.extend_from_slice(&sec.to_le_bytes());
            f.extend_from_slice(&frac.to_le_bytes());
            f.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            f.extend_from_slice(&wire.to_le_bytes());
            f.extend_from_slice(bytes);
        }
        f
    }

    /// Every record (timestamp, wire length, bytes) and the error that
    /// ended the file, if one did.
    type Read = (Vec<(u64, u32, Vec<u8>)>, Option<String>);

    /// Read both ways, mapped and in chunks, which must agree.
    fn read_all(path: &Path) -> Read {
        let [mapped, chunks] = [Reading::Mapped, Reading::Chunks].map(|reading| {
            let mut r = FileReader::open_as(path, reading).unwrap();
            assert!(matches!(r, FileReader::Classic(_)));
            assert_eq!(r.is_mapped(), reading == Reading::Mapped);
            assert_eq!(r.dlt(), 1);
            drain(&mut r)
        });
        assert_eq!(mapped, chunks, "mapped and chunked reading differ");
        mapped
    }

    fn drain(r: &mut FileReader) -> Read {
        let mut out = Vec::new();
        loop {
            match r.next_record() {
                Ok(Some((ts, wire, data))) => out.push((ts, wire, data.to_vec())),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn records_come_out_as_written_with_both_resolutions() {
        let dir = tempfile::tempdir().unwrap();
        for nano in [false, true] {
            let path = dir.path().join(format!("{nano}.pcap"));
            // The second record was cut at the snap length: 96 of 1500 bytes.
            let long = [7u8; 96];
            std::fs::write(
                &path,
                pcap(nano, &[(5, 10, b"abc", 60), (6, 20, &long, 1500)]),
            )
            .unwrap();
            let (records, error) = read_all(&path);
            let unit = if nano { 1 } else { 1000 };
            assert_eq!(error, None);
            assert_eq!(
                records,
                vec![
                    (5_000_000_000 + 10 * unit, 60, b"abc".to_vec()),
                    (6_000_000_000 + 20 * unit, 1500, long.to_vec()),
                ]
            );
            // Rewinding starts over.
            for reading in [Reading::Mapped, Reading::Chunks] {
                let mut r = FileReader::open_as(&path, reading).unwrap();
                r.next_record().unwrap();
                r.next_record().unwrap();
                assert!(r.next_record().unwrap().is_none());
                r.rewind(&path).unwrap();
                assert_eq!(r.next_record().unwrap().unwrap().2, b"abc");
            }
        }
    }

    #[test]
    fn a_truncated_file_ends_with_an_error_after_its_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pcap");
        let mut bytes = pcap(false, &[(1, 0, b"whole", 5), (2, 0, b"partial", 7)]);
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, bytes).unwrap();
        let (records, error) = read_all(&path);
        assert_eq!(records.len(), 1);
        assert!(error.unwrap().contains("truncated"));
    }

    #[test]
    fn records_longer_than_a_chunk_and_across_chunks_come_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.pcap");
        // A record longer than the read chunk, then enough small ones that
        // several straddle a chunk's end.
        let big: Vec<u8> = (0..CHUNK + CHUNK / 2).map(|i| (i % 251) as u8).collect();
        let small: Vec<Vec<u8>> = (0..40_000u32)
            .map(|i| vec![(i % 256) as u8; 1 + (i as usize % 29)])
            .collect();
        let mut records: Vec<(u32, u32, &[u8], u32)> = vec![(1, 0, &big, big.len() as u32)];
        for (i, s) in small.iter().enumerate() {
            records.push((2, i as u32, s, s.len() as u32));
        }
        std::fs::write(&path, pcap(false, &records)).unwrap();
        let (read, error) = read_all(&path);
        assert_eq!(error, None);
        assert_eq!(read.len(), records.len());
        for ((_, _, want, wire), (_, got_wire, got)) in records.iter().zip(&read) {
            assert_eq!((got.as_slice(), got_wire), (*want, wire));
        }
    }

    #[test]
    fn big_endian_files_are_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("be.pcap");
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_be_bytes());
        f.extend_from_slice(&2u16.to_be_bytes());
        f.extend_from_slice(&4u16.to_be_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_be_bytes());
        f.extend_from_slice(&1u32.to_be_bytes());
        for word in [7u32, 250, 3, 60] {
            f.extend_from_slice(&word.to_be_bytes());
        }
        f.extend_from_slice(b"xyz");
        std::fs::write(&path, f).unwrap();
        let (records, error) = read_all(&path);
        assert_eq!(error, None);
        assert_eq!(records, vec![(7_000_250_000, 60, b"xyz".to_vec())]);
    }

    #[test]
    fn a_corrupt_captured_length_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.pcap");
        let mut bytes = pcap(false, &[(1, 0, b"whole", 5), (2, 0, b"next", 4)]);
        // The second record's captured length: 4 GB minus one.
        let at = 24 + 16 + 5 + 8;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let (records, error) = read_all(&path);
        assert_eq!(records.len(), 1);
        let error = error.unwrap();
        assert!(
            error.contains("offset 45") && error.contains("4294967295"),
            "{error}"
        );
    }

    #[test]
    fn a_file_that_grows_is_read_up_to_its_length_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grows.pcap");
        for reading in [Reading::Mapped, Reading::Chunks] {
            std::fs::write(&path, pcap(false, &[(1, 0, b"first", 5)])).unwrap();
            let mut r = FileReader::open_as(&path, reading).unwrap();
            let more = pcap(false, &[(1, 0, b"first", 5), (2, 0, b"second", 6)]);
            std::fs::write(&path, &more).unwrap();
            assert_eq!(r.next_record().unwrap().unwrap().2, b"first");
            assert!(r.next_record().unwrap().is_none());
        }
    }

    /// Records of 1 to 300 bytes, each filled with its index's low byte.
    fn numbered(count: u32) -> (Vec<u8>, Vec<usize>) {
        let payloads: Vec<Vec<u8>> = (0..count)
            .map(|i| vec![(i % 251) as u8 + 1; 1 + (i as usize * 37) % 300])
            .collect();
        let records: Vec<(u32, u32, &[u8], u32)> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (1, i as u32, p.as_slice(), p.len() as u32))
            .collect();
        // Each record's offset in the file.
        let mut at = FILE_HEADER_LEN as usize;
        let offsets = payloads
            .iter()
            .map(|p| {
                let here = at;
                at += 16 + p.len();
                here
            })
            .collect();
        (pcap(false, &records), offsets)
    }

    #[test]
    fn a_mapped_file_truncated_during_the_replay_ends_it_with_an_error_not_a_crash() {
        // wasmtime's signal handlers in place first, as in the monitor:
        // ours then passes the faults it does not own on to them.
        let engine = wasmtime::Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let (bytes, offsets) = numbered(20_000);
        // Cuts on a page boundary (the pages after it fault) and inside a
        // page and a record (the rest of that page reads as zeros).
        for cut in [40 * 4096, 40 * 4096 + 1234] {
            let path = dir.path().join(format!("cut-{cut}.pcap"));
            std::fs::write(&path, &bytes).unwrap();
            let mut r = FileReader::open_as(&path, Reading::Mapped).unwrap();
            assert!(r.is_mapped());
            for _ in 0..100 {
                r.next_record().unwrap().unwrap();
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut as u64)
                .unwrap();
            let (records, error) = drain(&mut r);
            let error = error.expect("the replay ends with an error");
            // On a page boundary the fault tells; inside a page the zeros
            // and the file's new length do.
            let how = if cut % 4096 == 0 {
                "truncated during the replay; the record at offset".to_string()
            } else {
                format!("truncated during the replay (to {cut} bytes)")
            };
            assert!(error.contains(&how), "{error}");
            // Every record wholly before the cut came out as written;
            // nothing after the record the cut falls in did.
            let whole = offsets.iter().filter(|&&o| o < cut).count() - 1;
            let handed = 100 + records.len();
            assert!(
                handed >= whole && handed <= whole + 1,
                "{handed} records, {whole} whole: {error}"
            );
            for (i, (_, wire, data)) in records.iter().enumerate().take(whole - 100) {
                let n = 100 + i;
                assert_eq!(*wire as usize, data.len());
                assert!(data.iter().all(|&b| b == (n % 251) as u8 + 1), "record {n}");
            }
        }
        drop(engine);
    }

    #[test]
    fn no_capture_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pcap");
        std::fs::write(&path, b"not a capture at all").unwrap();
        let Err(e) = FileReader::open(&path) else {
            panic!("opened garbage")
        };
        assert!(e.contains("x.pcap"), "{e}");
    }
}
