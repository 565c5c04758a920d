//! Reading capture files for replay.
//!
//! A classic pcap file (its header decoded by `pcap-file`) is read in
//! large chunks into one buffer that is reused, and its records are handed
//! out in place: one `read(2)` per chunk, and the records the link thread then
//! parses are in the cache the copy just brought them into. Sessions 5–7
//! memory-mapped the file instead; that cost as much CPU on the bench's
//! small packets and a third more on full-size ones (a page fault per
//! 64 KB, handing the pages back so that the resident memory does not grow
//! with the file, each record's first touch waiting on memory), and a file
//! truncated under the map killed the process (SIGBUS). Anything else
//! libpcap reads (pcapng) goes through libpcap.
//!
//! A file that grows while it is replayed is read up to the length it had
//! when opened; one truncated meanwhile ends with a "truncated" error.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use pcap_file::pcap::PcapParser;

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

/// A classic pcap file read through a reused buffer.
pub struct ClassicPcap {
    file: File,
    buf: Vec<u8>,
    /// `buf[head..tail]`: read, not yet handed out.
    head: usize,
    tail: usize,
    /// File offset of `buf[0]`.
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
    /// Opens `path`: in chunks if it is a classic pcap file, else with
    /// libpcap.
    ///
    /// # Errors
    /// A message naming the file if it cannot be opened or is no capture.
    pub fn open(path: &Path) -> Result<FileReader, String> {
        let fail = |e: String| format!("cannot open {}: {e}", path.display());
        let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
        let end = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        if file.read_exact(&mut header).is_ok()
            && let Ok((_, parser)) = PcapParser::new(&header[..])
        {
            let h = parser.header();
            return Ok(FileReader::Classic(ClassicPcap {
                nano: h.ts_resolution == pcap_file::TsResolution::NanoSecond,
                dlt: u32::from(h.datalink) as i32,
                file,
                buf: vec![0; CHUNK],
                head: 0,
                tail: 0,
                buf_at: FILE_HEADER_LEN,
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
                    crate::capture::timeval_ns(&p.header.ts, true),
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

impl ClassicPcap {
    fn rewind(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
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
        loop {
            let at = self.buf_at + self.head as u64;
            let rest = &self.buf[self.head..self.tail];
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
                    return Err(format!(
                        "record at offset {at}: captured length {cap} is over the largest this capture holds ({})",
                        self.max_record
                    ));
                }
                let data_at = self.head + 16;
                let end = data_at + cap as usize;
                if end <= self.tail {
                    self.head = end;
                    let frac = u64::from(frac);
                    let ts_ns =
                        u64::from(sec) * 1_000_000_000 + if self.nano { frac } else { frac * 1000 };
                    return Ok(Some((ts_ns, wire_len, &self.buf[data_at..end])));
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

    fn read_all(path: &Path) -> Read {
        let mut r = FileReader::open(path).unwrap();
        assert!(matches!(r, FileReader::Classic(_)));
        assert_eq!(r.dlt(), 1);
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
            let mut r = FileReader::open(&path).unwrap();
            r.next_record().unwrap();
            r.next_record().unwrap();
            assert!(r.next_record().unwrap().is_none());
            r.rewind(&path).unwrap();
            assert_eq!(r.next_record().unwrap().unwrap().2, b"abc");
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
        std::fs::write(&path, pcap(false, &[(1, 0, b"first", 5)])).unwrap();
        let mut r = FileReader::open(&path).unwrap();
        let more = pcap(false, &[(1, 0, b"first", 5), (2, 0, b"second", 6)]);
        std::fs::write(&path, &more).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().2, b"first");
        assert!(r.next_record().unwrap().is_none());
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
