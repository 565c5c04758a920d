//! Reading capture files for replay.
//!
//! A classic pcap file is memory-mapped and its records handed out in place
//! (`pcap-file`'s slice parser): no `read(2)` per 4 KB and no copy into a
//! read buffer, which on a replay was a quarter of the link thread's time.
//! Anything else libpcap reads (pcapng) goes through libpcap.
//!
//! The map is private and read-only: a file that grows while it is
//! replayed is read up to the length it had when opened. Truncating a file
//! while it is being replayed is not supported (the kernel would fault the
//! read of a vanished page).

use std::path::Path;

use pcap_file::PcapError;
use pcap_file::pcap::PcapParser;

/// One record: timestamp (ns), length on the wire, captured bytes.
pub type Record<'a> = (u64, u32, &'a [u8]);

/// A capture file being read.
pub enum FileReader {
    /// A classic pcap file, mapped.
    Mapped(MappedPcap),
    /// Whatever else libpcap reads.
    Libpcap(pcap::Capture<pcap::Offline>),
}

/// A classic pcap file read through a memory map.
pub struct MappedPcap {
    map: memmap2::Mmap,
    parser: PcapParser,
    /// Offset of the first record.
    start: usize,
    /// Offset of the next record.
    pos: usize,
    /// Pages before this offset have been handed back to the kernel.
    released: usize,
    nano: bool,
    dlt: i32,
}

/// Read pages are handed back (`MADV_DONTNEED`) this many bytes at a time,
/// so that the process's resident memory does not grow with the file (the
/// pages stay in the page cache; only the mapping lets go of them).
const RELEASE_EVERY: usize = 8 << 20;

impl FileReader {
    /// Opens `path`: mapped if it is a classic pcap file, else with libpcap.
    ///
    /// # Errors
    /// A message naming the file if it cannot be opened or is no capture.
    pub fn open(path: &Path) -> Result<FileReader, String> {
        let fail = |e: String| format!("cannot open {}: {e}", path.display());
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        // SAFETY: the map is read-only and private; the module's doc says
        // what happens if another process truncates the file meanwhile.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| fail(e.to_string()))?;
        if let Ok((rest, parser)) = PcapParser::new(&map[..]) {
            let header = parser.header();
            let start = map.len() - rest.len();
            // Read-ahead for a front-to-back read; only a hint.
            let _ = map.advise(memmap2::Advice::Sequential);
            return Ok(FileReader::Mapped(MappedPcap {
                nano: header.ts_resolution == pcap_file::TsResolution::NanoSecond,
                dlt: u32::from(header.datalink) as i32,
                map,
                parser,
                start,
                pos: start,
                released: 0,
            }));
        }
        drop(map);
        pcap::Capture::from_file_with_precision(path, pcap::Precision::Nano)
            .map(FileReader::Libpcap)
            .map_err(|e| fail(e.to_string()))
    }

    /// The file's link type (DLT).
    #[must_use]
    pub fn dlt(&self) -> i32 {
        match self {
            FileReader::Mapped(m) => m.dlt,
            FileReader::Libpcap(cap) => cap.get_datalink().0,
        }
    }

    /// The next record; `None` at the end of the file.
    ///
    /// # Errors
    /// A record that cannot be read (a truncated or corrupt file).
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, String> {
        match self {
            FileReader::Mapped(m) => m.next_record(),
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
    /// If libpcap cannot open the file again.
    pub fn rewind(&mut self, path: &Path) -> Result<(), String> {
        match self {
            FileReader::Mapped(m) => {
                m.pos = m.start;
                m.released = 0;
                Ok(())
            }
            FileReader::Libpcap(_) => {
                *self = FileReader::open(path)?;
                Ok(())
            }
        }
    }
}

impl MappedPcap {
    fn next_record(&mut self) -> Result<Option<Record<'_>>, String> {
        if self.pos - self.released >= RELEASE_EVERY {
            // Everything before this record has been handed out and copied
            // (the borrow of the last record ended with this call).
            let upto = self.pos & !(RELEASE_EVERY - 1);
            // SAFETY: a read-only private mapping of a file: dropping pages
            // discards nothing, and a later read faults them in again from
            // the file with the same contents. No slice into them is alive.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.released,
                    upto - self.released,
                )
            };
            self.released = upto;
        }
        let rest = &self.map[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        // Raw records: libpcap, too, accepts an original length above the
        // file's snap length (a capture truncated with `-s`).
        let (after, raw) = match self.parser.next_raw_packet(rest) {
            Ok(r) => r,
            Err(PcapError::IncompleteBuffer) => {
                return Err(format!(
                    "truncated dump file; the last record at offset {} is incomplete",
                    self.pos
                ));
            }
            Err(e) => return Err(format!("record at offset {}: {e}", self.pos)),
        };
        let frac = u64::from(raw.ts_frac);
        let ts_ns =
            u64::from(raw.ts_sec) * 1_000_000_000 + if self.nano { frac } else { frac * 1000 };
        let wire_len = raw.orig_len;
        let len = raw.data.len();
        let data_at = self.map.len() - after.len() - len;
        self.pos = self.map.len() - after.len();
        Ok(Some((ts_ns, wire_len, &self.map[data_at..data_at + len])))
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
        assert!(matches!(r, FileReader::Mapped(_)));
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
