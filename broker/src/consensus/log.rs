//! The log as the consensus layer sees it, and the engine's `Log` on top
//! of it: engine records appended during a loop turn are grouped into one
//! Raft entry behind an `Entry` header record.
//!
//! The header is reserved when the turn's first record is appended and
//! filled in when the entry is sealed: only then does Raft say which index
//! and term the entry gets. Until the turn's write batch is submitted, a
//! sealed entry Raft refused can still be discarded.

use std::collections::VecDeque;

use cmq_protocol::ErrorCode;

use super::entry::push_record;
use super::records::{rtype, EntryHeader, EntryKind, FLAG_SYNC};
use crate::engine::{Durability, EngineError, Log};

/// A log operation that failed (the log refuses writes until it recovers).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LogFailure(pub String);

impl From<LogFailure> for EngineError {
    fn from(e: LogFailure) -> EngineError {
        EngineError::new(ErrorCode::STORAGE_UNAVAILABLE, e.0)
    }
}

/// What the consensus layer needs from a log: the write-ahead log in the
/// broker, an in-memory log with simulated crashes in the simulator.
///
/// Positions are byte offsets that only grow. `end()` is where the next
/// record starts; a record's position (what `append` returns) is where its
/// payload starts.
pub trait RawLog {
    fn append(&mut self, rtype: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, LogFailure>;
    /// Appends a record of `len` zero bytes to be filled by `patch` before
    /// the next submit.
    fn reserve(&mut self, rtype: u8, len: usize, durability: Durability) -> Result<u64, LogFailure>;
    /// Overwrites the payload of a record appended since the last submit.
    fn patch(&mut self, pos: u64, payload: &[u8]);
    fn read(&self, pos: u64, len: u32) -> Result<&[u8], LogFailure>;
    /// Calls `f(position, rtype, payload)` for `count` records, the first
    /// of which has its payload at `pos`.
    fn read_records(&self, pos: u64, count: u32, f: &mut dyn FnMut(u64, u8, &[u8])) -> Result<(), LogFailure>;
    fn end(&self) -> u64;
    /// Everything below is in the OS (survives the process).
    fn written_end(&self) -> u64;
    /// Everything below is covered by a completed fdatasync.
    fn durable_end(&self) -> u64;
    /// Everything appended so far must be fdatasync'd soon (not only
    /// within the flush interval). Moves no output dependency: what a reply
    /// must wait for is decided by the records the engine appended.
    fn require_sync(&mut self);
}

/// The entry being built this loop turn.
#[derive(Debug)]
pub struct OpenEntry {
    pub header_pos: u64,
    /// The records as Raft carries them (empty in solo mode).
    pub data: Vec<u8>,
    /// Each record's payload position, in order.
    pub positions: Vec<u64>,
    pub sync: bool,
    /// Length of the data Raft carries (set when it takes `data`).
    pub data_len: usize,
}

/// The engine's log: engine records go into the open entry.
pub struct EntryLog<R> {
    pub raw: R,
    open: Option<OpenEntry>,
    /// Whether the engine may append (this replica leads its group; always
    /// in solo mode).
    writable: bool,
    /// Whether entry data is kept for Raft to carry (not in solo mode).
    replicate: bool,
    /// Where the last record that belongs to an entry ends. Output that
    /// reflects everything logged waits for this, not for the log's end:
    /// hard state and durable marks after it are never part of an entry,
    /// so a commit would never reach past them.
    entries_end: u64,
    /// Where each entry still in the log starts and ends, oldest first, so
    /// that releasing old segments never cuts an entry from its header.
    extents: VecDeque<(u64, u64)>,
}

impl<R: RawLog> EntryLog<R> {
    pub fn new(raw: R, replicate: bool) -> EntryLog<R> {
        let entries_end = raw.end();
        EntryLog { raw, open: None, writable: !replicate, replicate, entries_end, extents: VecDeque::new() }
    }

    pub fn set_writable(&mut self, writable: bool) {
        self.writable = writable;
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Bytes of entry data this turn so far (the leader stops taking
    /// requests past `ENTRY_BYTES_SOFT_MAX`).
    pub fn open_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.data.len() + 8 * o.positions.len())
    }

    /// Where the entries logged so far (the open one included) end.
    pub fn entries_end(&self) -> u64 {
        self.entries_end
    }

    /// The log dropped what was not written after a storage error: forget
    /// the open entry and any end past what the log still holds.
    pub fn reset_after_recovery(&mut self) {
        self.open = None;
        self.entries_end = self.entries_end.min(self.raw.end());
    }

    /// An entry was written from its header at `header_pos` up to `end`
    /// (by the replica, or found in the log at start-up).
    pub fn note_entry(&mut self, header_pos: u64, end: u64) {
        self.entries_end = self.entries_end.max(end);
        if self.extents.back().is_none_or(|(h, _)| *h < header_pos) {
            self.extents.push_back((header_pos, end));
        }
    }

    /// Where the entry holding log position `pos` starts (its header), or
    /// `pos` when no entry holds it: the log may be released below this.
    pub fn entry_start(&self, pos: u64) -> u64 {
        let n = self.extents.partition_point(|(h, _)| *h <= pos);
        match n.checked_sub(1).and_then(|i| self.extents.get(i)) {
            Some((h, end)) if pos < *end => *h,
            _ => pos,
        }
    }

    /// Forgets entries whose header lies below `pos` (released).
    pub fn forget_below(&mut self, pos: u64) {
        while self.extents.front().is_some_and(|(h, _)| *h < pos) {
            self.extents.pop_front();
        }
    }

    pub fn has_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn take_open(&mut self) -> Option<OpenEntry> {
        self.open.take()
    }

    /// Fills in the header of a sealed entry once Raft assigned it a place
    /// (`prev_term`: the term of entry `index - 1`).
    pub fn finish(&mut self, open: &OpenEntry, term: u64, index: u64, prev_term: u64) {
        let header = EntryHeader {
            term,
            index,
            prev_term,
            kind: EntryKind::Normal,
            flags: if open.sync { FLAG_SYNC } else { 0 },
            records: open.positions.len() as u32,
            data_len: open.data_len as u32,
        };
        self.raw.patch(open.header_pos, &header.encode());
        self.note_entry(open.header_pos, self.entries_end);
    }

    /// Marks a sealed entry Raft refused (this node stopped leading) void:
    /// its records stay in the log (positions never move) but are never
    /// part of the Raft log nor applied at recovery.
    pub fn void(&mut self, open: OpenEntry) {
        let header = EntryHeader {
            term: 0,
            index: 0,
            prev_term: 0,
            kind: EntryKind::Void,
            flags: 0,
            records: open.positions.len() as u32,
            data_len: 0,
        };
        self.raw.patch(open.header_pos, &header.encode());
    }
}

impl<R: RawLog> Log for EntryLog<R> {
    fn append(&mut self, rt: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, EngineError> {
        if !self.writable {
            return Err(EngineError::new(ErrorCode::NOT_LEADER, "this node does not lead the queue's shard"));
        }
        if self.open.is_none() {
            let header_pos = self.raw.reserve(rtype::ENTRY, EntryHeader::PAYLOAD_BYTES, Durability::Written)?;
            self.open =
                Some(OpenEntry { header_pos, data: Vec::new(), positions: Vec::new(), sync: false, data_len: 0 });
        }
        let pos = self.raw.append(rt, parts, durability)?;
        self.entries_end = self.raw.end();
        let Some(open) = self.open.as_mut() else { unreachable!("opened above") };
        open.positions.push(pos);
        open.sync |= durability == Durability::Synced;
        if self.replicate {
            push_record(&mut open.data, rt, parts);
        }
        Ok(pos)
    }

    fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError> {
        self.raw.read(pos, len).map_err(|e| EngineError::new(ErrorCode::INTERNAL, e.0))
    }
}
