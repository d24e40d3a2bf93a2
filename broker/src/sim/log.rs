//! An in-memory log with the real WAL's position arithmetic and its
//! durability states: appended (in the write batch), written (in the OS:
//! survives a process crash), durable (fdatasync'd: survives power loss).
//! A simulated crash keeps what its kind of crash keeps. Like the WAL it
//! is cut into segments (small ones, so releases happen often), and a
//! released prefix is gone for good.

use crate::consensus::{LogFailure, RawLog};
use crate::engine::Durability;
use crate::storage::RECORD_HEADER_BYTES;

#[derive(Debug, Clone)]
struct Rec {
    /// Where the record's header starts.
    start: u64,
    rtype: u8,
    payload: Vec<u8>,
}

impl Rec {
    fn pos(&self) -> u64 {
        self.start + RECORD_HEADER_BYTES
    }
    fn end(&self) -> u64 {
        self.pos() + self.payload.len() as u64
    }
}

/// Bytes of log per simulated segment: small, so that housekeeping
/// releases segments, writes catalogs and compacts many times a run.
pub const SEGMENT_BYTES: u64 = 2048;

#[derive(Debug, Clone, Default)]
pub struct SimLog {
    recs: Vec<Rec>,
    /// Where the oldest segment still held starts (a segment boundary):
    /// everything below was released.
    first: u64,
    end: u64,
    written_end: u64,
    durable_end: u64,
    /// An fdatasync was asked for since the last one started.
    sync_wanted: bool,
    /// Written but not durable since this time (for the flush interval).
    unsynced_since: Option<u64>,
}

impl SimLog {
    /// Makes everything appended so far written (the turn's write).
    pub fn submit(&mut self, now_ms: u64) {
        if self.end > self.written_end && self.unsynced_since.is_none() {
            self.unsynced_since = Some(now_ms);
        }
        self.written_end = self.end;
    }

    /// Whether an fdatasync should start now: asked for, or written data
    /// older than the flush interval.
    pub fn sync_due(&self, now_ms: u64, flush_interval_ms: u64) -> bool {
        self.written_end > self.durable_end
            && (self.sync_wanted || self.unsynced_since.is_some_and(|t| now_ms >= t + flush_interval_ms))
    }

    /// Starts an fdatasync: returns the position it will make durable.
    pub fn start_sync(&mut self) -> u64 {
        self.sync_wanted = false;
        self.unsynced_since = None;
        self.written_end
    }

    pub fn sync_done(&mut self, target: u64) {
        self.durable_end = self.durable_end.max(target);
    }

    /// Start-up recovery: what a crashed process left written (in the page
    /// cache) becomes durable before the replica starts, as
    /// `storage/recovery.rs` fdatasyncs the newest segment. Raft-rs treats
    /// every entry found in the log as persisted, so a restarted node
    /// must not report entries a power loss could still take back.
    pub fn recover(&mut self) {
        self.written_end = self.end;
        self.durable_end = self.end;
        self.sync_wanted = false;
        self.unsynced_since = None;
    }

    /// A crash: the process dies (`power_loss` false: the OS keeps what
    /// was written) or the machine loses power (only durable data stays,
    /// plus a prefix of the rest chosen by `keep_unsynced`, in records).
    pub fn crash(&mut self, power_loss: bool, keep_unsynced: usize) {
        let keep_to = if power_loss { self.durable_end } else { self.written_end };
        let mut n = self.recs.partition_point(|r| r.end() <= keep_to);
        if power_loss {
            let written = self.recs.partition_point(|r| r.end() <= self.written_end);
            n = (n + keep_unsynced).min(written);
        }
        self.recs.truncate(n);
        self.end = self.recs.last().map_or(self.durable_end.max(self.written_end.min(self.end)), |r| r.end());
        // Positions never move: the next record starts past anything the
        // crashed process may have written.
        self.end = self.end.max(keep_to);
        self.written_end = self.end;
        self.durable_end = self.durable_end.min(self.end);
        self.sync_wanted = false;
        self.unsynced_since = None;
    }

    /// Deletes the whole segments below `pos` (as `Wal::release_before`):
    /// their records are gone, across crashes too. Records whose payload
    /// starts below the released boundary go with them.
    pub fn release_before(&mut self, pos: u64) {
        let to = pos.min(self.end) / SEGMENT_BYTES * SEGMENT_BYTES;
        if to <= self.first {
            return;
        }
        let n = self.recs.partition_point(|r| r.pos() < to);
        self.recs.drain(..n);
        self.first = to;
    }

    /// Where the oldest segment still held starts.
    pub fn first_pos(&self) -> u64 {
        self.first
    }

    /// Segments from the oldest held to the one the head is in.
    pub fn segments(&self) -> usize {
        ((self.end.max(self.first + 1) - 1 - self.first) / SEGMENT_BYTES + 1) as usize
    }

    /// Every record in log order: `(payload position, end, type, payload)`.
    pub fn records(&self) -> impl Iterator<Item = (u64, u64, u8, &[u8])> + '_ {
        self.recs.iter().map(|r| (r.pos(), r.end(), r.rtype, r.payload.as_slice()))
    }

    fn find(&self, pos: u64) -> Option<usize> {
        let i = self.recs.partition_point(|r| r.pos() < pos);
        (self.recs.get(i)?.pos() == pos).then_some(i)
    }

    /// The record whose payload holds `pos`.
    fn containing(&self, pos: u64) -> Option<&Rec> {
        let i = self.recs.partition_point(|r| r.pos() <= pos);
        let r = self.recs.get(i.checked_sub(1)?)?;
        (pos < r.end() || (pos == r.pos())).then_some(r)
    }
}

impl RawLog for SimLog {
    fn append(&mut self, rtype: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, LogFailure> {
        let mut payload = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            payload.extend_from_slice(p);
        }
        let r = Rec { start: self.end, rtype, payload };
        let pos = r.pos();
        self.end = r.end();
        self.recs.push(r);
        if durability == Durability::Synced {
            self.sync_wanted = true;
        }
        Ok(pos)
    }

    fn reserve(&mut self, rtype: u8, len: usize, durability: Durability) -> Result<u64, LogFailure> {
        self.append(rtype, &[&vec![0u8; len]], durability)
    }

    fn patch(&mut self, pos: u64, payload: &[u8]) {
        let i = self.find(pos).expect("patch of a record that was not reserved");
        assert!(self.recs[i].start >= self.written_end, "patch of a submitted record");
        self.recs[i].payload.copy_from_slice(payload);
    }

    fn read(&self, pos: u64, len: u32) -> Result<&[u8], LogFailure> {
        let r = self.containing(pos).ok_or_else(|| LogFailure(format!("no record at {pos}")))?;
        let off = (pos - r.pos()) as usize;
        r.payload
            .get(off..off + len as usize)
            .ok_or_else(|| LogFailure(format!("{len} bytes at {pos} run past the record")))
    }

    fn read_records(&self, pos: u64, count: u32, f: &mut dyn FnMut(u64, u8, &[u8])) -> Result<(), LogFailure> {
        let i = self.find(pos).ok_or_else(|| LogFailure(format!("no record at {pos}")))?;
        for r in self.recs.iter().skip(i).take(count as usize) {
            f(r.pos(), r.rtype, &r.payload);
        }
        Ok(())
    }

    fn end(&self) -> u64 {
        self.end
    }

    fn written_end(&self) -> u64 {
        self.written_end
    }

    fn durable_end(&self) -> u64 {
        self.durable_end
    }

    fn require_sync(&mut self) {
        self.sync_wanted = true;
    }
}
