//! A capture file replayed: as fast as it reads, paced by its timestamps,
//! looped (timestamps shifted past the previous round), or lossless (the
//! link waits for room in its deployments' queues).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::file::FileReader;
use super::{Next, PacketSource};
use crate::config::Replay;

/// A capture file being replayed.
pub struct ReplaySource {
    reader: FileReader,
    path: PathBuf,
    replay: Replay,
    /// Added to timestamps: grows by the file's span each loop.
    shift_ns: u64,
    first_ts: Option<u64>,
    last_ts: u64,
    /// Wall clock and file time of the first packet, for pacing.
    pace: Option<(Instant, u64)>,
    /// A paced packet read but not yet due: (file ts, wire len, bytes).
    pending: Option<(u64, u32, Vec<u8>)>,
    /// The bytes of the packet last handed out from `pending`.
    held: Vec<u8>,
    /// A looped replay reached the end: start over at the next call.
    rewind: bool,
}

impl ReplaySource {
    /// Opens the file at `path` for a replay in `replay` mode.
    ///
    /// # Errors
    /// A message naming the file if it cannot be opened or is no capture.
    pub fn open(path: PathBuf, replay: Replay) -> Result<Self, String> {
        Ok(ReplaySource {
            reader: FileReader::open(&path)?,
            path,
            replay,
            shift_ns: 0,
            first_ts: None,
            last_ts: 0,
            pace: None,
            pending: None,
            held: Vec::new(),
            rewind: false,
        })
    }

    /// Starts the next round of a looped replay, timestamps shifted past
    /// the previous round.
    fn reopen(&mut self) -> Result<(), String> {
        self.shift_ns += self.last_ts - self.first_ts.unwrap_or(0) + 1_000_000;
        self.reader.rewind(&self.path)
    }
}

impl PacketSource for ReplaySource {
    fn dlt(&self) -> i32 {
        self.reader.dlt()
    }

    fn label(&self) -> String {
        format!("pcap:{}", self.path.display())
    }

    fn waits_for_deployments(&self) -> bool {
        true
    }

    fn lossless(&self) -> bool {
        self.replay == Replay::Lossless
    }

    #[inline]
    fn next(&mut self) -> Result<Next<'_>, String> {
        if std::mem::take(&mut self.rewind) {
            self.reopen()?;
        }
        if self.pending.is_none() {
            match self.reader.next_record() {
                Ok(Some((file_ts, wire_len, data))) => {
                    self.first_ts.get_or_insert(file_ts);
                    self.last_ts = self.last_ts.max(file_ts);
                    if self.replay != Replay::RecordedPace {
                        return Ok(Next::Packet {
                            ts_ns: file_ts + self.shift_ns,
                            wire_len,
                            data,
                        });
                    }
                    self.pending = Some((file_ts, wire_len, data.to_vec()));
                }
                Ok(None) => {
                    if self.replay != Replay::Loop || self.first_ts.is_none() {
                        return Ok(Next::End);
                    }
                    self.rewind = true;
                    return Ok(Next::Again);
                }
                Err(e) => return Err(format!("reading {}: {e}", self.path.display())),
            }
        }
        let (file_ts, wire_len, _) = self.pending.as_ref().expect("set above");
        let (file_ts, wire_len) = (*file_ts, *wire_len);
        let (wall, origin) = *self.pace.get_or_insert((Instant::now(), file_ts));
        let due = wall + Duration::from_nanos(file_ts.saturating_sub(origin));
        let now = Instant::now();
        if due > now {
            return Ok(Next::Wait(due - now));
        }
        self.held = self.pending.take().expect("set above").2;
        Ok(Next::Packet {
            ts_ns: file_ts + self.shift_ns,
            wire_len,
            data: &self.held,
        })
    }
}
