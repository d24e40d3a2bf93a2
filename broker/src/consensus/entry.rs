//! Raft entries: the data format Raft carries, and the in-memory index of
//! the entries a replica's log holds.
//!
//! A normal entry's data is the entry's engine records, each framed as
//! `len u32 (1 + payload length) | rtype u8 | payload` (little-endian), in
//! the order the leader applied them. A configuration change's data is the
//! raft-rs `ConfChangeV2` protobuf. Nothing in an entry names a log
//! position: every replica writes the records into its own log and applies
//! them with the positions they got there.

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, Bytes};

use crate::storage::RECORD_PAYLOAD_MAX_BYTES;

/// Bytes of one record's frame inside entry data (length and type).
pub const RECORD_FRAME_BYTES: usize = 5;

/// A leader stops taking new requests in a loop turn once the turn's entry
/// holds this much (the rest wait for the next turn), so entries stay far
/// below what a peer frame carries. One request can still add a record of
/// up to `RECORD_PAYLOAD_MAX_BYTES` past it.
pub const ENTRY_BYTES_SOFT_MAX: usize = 8 << 20;

/// The largest entry a replica sends or accepts: the soft limit, one
/// maximum-size record, and the bounded per-turn work of timers.
pub const ENTRY_BYTES_MAX: usize = 48 << 20;

const _: () = assert!(ENTRY_BYTES_SOFT_MAX + RECORD_PAYLOAD_MAX_BYTES as usize + (8 << 20) <= ENTRY_BYTES_MAX);

/// Entry data that does not parse (a bug or a corrupt peer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryDataError {
    #[error("entry data truncated at byte {0}")]
    Truncated(usize),
    #[error("entry record at byte {at} has impossible length {len}")]
    BadLength { at: usize, len: u32 },
    #[error("entry record at byte {at} has type {rtype}, which the engine does not own")]
    BadType { at: usize, rtype: u8 },
}

/// Appends one framed record to entry data.
pub fn push_record(buf: &mut impl BufMut, rtype: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // Callers append records the log accepted, so `len` is at most
    // RECORD_PAYLOAD_MAX_BYTES, far below u32::MAX.
    buf.put_u32_le(u32::try_from(len + 1).unwrap_or(u32::MAX));
    buf.put_u8(rtype);
    for p in parts {
        buf.put_slice(p);
    }
}

/// The records of a normal entry's data, in order: `(rtype, payload)`.
pub struct Records<'a> {
    data: &'a [u8],
    at: usize,
}

pub fn records(data: &[u8]) -> Records<'_> {
    Records { data, at: 0 }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u8, &'a [u8]), EntryDataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.data.get(self.at..)?;
        if rest.is_empty() {
            return None;
        }
        let item = parse_one(rest, self.at);
        match &item {
            Ok((_, payload)) => self.at += RECORD_FRAME_BYTES + payload.len(),
            Err(_) => self.at = self.data.len(),
        }
        Some(item)
    }
}

fn parse_one(rest: &[u8], at: usize) -> Result<(u8, &[u8]), EntryDataError> {
    let Some(head) = rest.get(..RECORD_FRAME_BYTES) else {
        return Err(EntryDataError::Truncated(at));
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if len == 0 || len > RECORD_PAYLOAD_MAX_BYTES + 1 {
        return Err(EntryDataError::BadLength { at, len });
    }
    let rtype = head[4];
    if rtype == 0 || rtype >= super::records::rtype::FIRST {
        return Err(EntryDataError::BadType { at, rtype });
    }
    let end = RECORD_FRAME_BYTES + len as usize - 1;
    let payload = rest.get(RECORD_FRAME_BYTES..end).ok_or(EntryDataError::Truncated(at))?;
    Ok((rtype, payload))
}

/// Checks a whole entry's data and counts its records.
pub fn count_records(data: &[u8]) -> Result<u32, EntryDataError> {
    let mut n = 0u32;
    for r in records(data) {
        r?;
        n = n.saturating_add(1);
    }
    Ok(n)
}

/// Where one entry lives in the local log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedEntry {
    pub term: u64,
    /// Position of the entry's header payload.
    pub header_pos: u64,
    /// Log position just past the entry's last record.
    pub end_pos: u64,
}

/// Every entry the local log holds, by Raft index: what `Storage::term`
/// answers from, and how positions map to indices (a response waits for
/// the position its records end at; Raft reports indices).
#[derive(Debug, Default)]
pub struct EntryIndex {
    /// Index of `entries[0]`.
    first: u64,
    /// Term of the entry just before `first` (a snapshot's last entry).
    before_term: u64,
    /// Log position where the entries before `first` ended.
    before_end_pos: u64,
    entries: VecDeque<IndexedEntry>,
}

/// An entry that cannot go where it was put.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("entry {index} leaves a gap after the last entry {last}")]
    Gap { index: u64, last: u64 },
    #[error("entry {index} is below the first retained entry {first}")]
    Compacted { index: u64, first: u64 },
    #[error("entry {index} ends at {end_pos}, not after the previous entry's end {prev_end}")]
    Backwards { index: u64, end_pos: u64, prev_end: u64 },
}

impl EntryIndex {
    /// An empty log whose next entry is `snapshot_index + 1`.
    pub fn starting_after(snapshot_index: u64, snapshot_term: u64, end_pos: u64) -> EntryIndex {
        EntryIndex {
            first: snapshot_index + 1,
            before_term: snapshot_term,
            before_end_pos: end_pos,
            entries: VecDeque::new(),
        }
    }

    pub fn first_index(&self) -> u64 {
        self.first
    }

    pub fn last_index(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    /// The term of entry `index`, if the log still knows it (the entry
    /// just before the first retained one included).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index + 1 == self.first {
            return Some(self.before_term);
        }
        self.get(index).map(|e| e.term)
    }

    pub fn get(&self, index: u64) -> Option<&IndexedEntry> {
        let i = index.checked_sub(self.first)?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// Where the log up to and including entry `index` ends (for an index
    /// before the first retained entry, where those entries ended; past
    /// the last entry, where the last one ends).
    pub fn end_pos(&self, index: u64) -> u64 {
        if index < self.first {
            return self.before_end_pos;
        }
        match self.get(index) {
            Some(e) => e.end_pos,
            None => self.entries.back().map_or(self.before_end_pos, |e| e.end_pos),
        }
    }

    /// The highest index whose entry ends at or before `pos`.
    pub fn index_ending_by(&self, pos: u64) -> u64 {
        let n = self.entries.partition_point(|e| e.end_pos <= pos);
        self.first + n as u64 - 1
    }

    /// Records entry `index`. An index at or below the last one replaces
    /// that entry and everything after it (Raft's conflicting suffix);
    /// returns the first index that was dropped, if any.
    pub fn push(&mut self, index: u64, e: IndexedEntry) -> Result<Option<u64>, IndexError> {
        let last = self.last_index();
        if index > last + 1 {
            return Err(IndexError::Gap { index, last });
        }
        if index < self.first {
            return Err(IndexError::Compacted { index, first: self.first });
        }
        let truncated = (index <= last).then_some(index);
        self.entries.truncate((index - self.first) as usize);
        let prev_end = self.entries.back().map_or(self.before_end_pos, |p| p.end_pos);
        if e.header_pos < prev_end && truncated.is_none() {
            return Err(IndexError::Backwards { index, end_pos: e.end_pos, prev_end });
        }
        self.entries.push_back(e);
        Ok(truncated)
    }

    /// Forgets entries below `index` (their log space was released or a
    /// snapshot covers them).
    pub fn compact_to(&mut self, index: u64) {
        while self.first < index {
            let Some(e) = self.entries.pop_front() else {
                // Compacting past the last entry: the log restarts after it.
                self.before_end_pos = self.before_end_pos.max(self.end_pos(index - 1));
                self.first = index;
                return;
            };
            self.before_term = e.term;
            self.before_end_pos = e.end_pos;
            self.first += 1;
        }
    }

    /// Where the entry holding log position `pos` starts (its header), so
    /// that releasing the log below it keeps the header of every entry
    /// with a record at or after `pos`. `pos` itself when no entry holds it.
    pub fn entry_start(&self, pos: u64) -> u64 {
        let n = self.entries.partition_point(|e| e.header_pos <= pos);
        match n.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(e) if pos < e.end_pos => e.header_pos,
            _ => pos,
        }
    }

    /// Forgets the entries whose header lies below `pos` (their segment
    /// was released).
    pub fn forget_below(&mut self, pos: u64) {
        let n = self.entries.partition_point(|e| e.header_pos < pos) as u64;
        if n > 0 {
            self.compact_to(self.first + n);
        }
    }

    /// The lowest log position any retained entry occupies.
    pub fn min_pos(&self) -> Option<u64> {
        self.entries.front().map(|e| e.header_pos)
    }
}

/// Entry data kept in memory: every entry Raft may still hand out as
/// committed (above what it was told is applied), plus recent ones for
/// followers that are a little behind, within a byte budget. Older entries
/// are read back from the log when a lagging follower needs them.
#[derive(Debug, Default)]
pub struct EntryCache {
    entries: BTreeMap<u64, CachedEntry>,
    bytes: usize,
}

#[derive(Debug, Clone)]
pub struct CachedEntry {
    pub kind: super::records::EntryKind,
    pub data: Bytes,
    /// Position of each record's payload in the local log, in order.
    pub positions: Vec<u64>,
}

/// Bytes of entry data kept in memory beyond what must be.
pub const ENTRY_CACHE_BYTES_MAX: usize = 64 << 20;

impl EntryCache {
    pub fn get(&self, index: u64) -> Option<&CachedEntry> {
        self.entries.get(&index)
    }

    /// Caches entry `index` as just written to the log: any cached entry at
    /// or after it was replaced.
    pub fn put(&mut self, index: u64, e: CachedEntry) {
        for (_, old) in self.entries.split_off(&index) {
            self.bytes -= old.data.len();
        }
        self.bytes += e.data.len();
        self.entries.insert(index, e);
    }

    /// Caches an older entry read back from the log (for a lagging follower).
    pub fn put_fetched(&mut self, index: u64, e: CachedEntry) {
        if !self.entries.contains_key(&index) {
            self.bytes += e.data.len();
            self.entries.insert(index, e);
        }
    }

    /// Drops entries at or below `applied` while over budget, oldest first
    /// (and always those below `keep_from`, which the log no longer holds).
    pub fn trim(&mut self, applied: u64, keep_from: u64) {
        while let Some((&index, front)) = self.entries.first_key_value() {
            let over = self.bytes > ENTRY_CACHE_BYTES_MAX && index <= applied;
            if !(over || index < keep_from) {
                break;
            }
            self.bytes -= front.data.len();
            self.entries.remove(&index);
        }
    }

    /// Forgets everything (a snapshot replaced the log).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::records::EntryKind;

    fn framed(recs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, p) in recs {
            push_record(&mut b, *t, &[p]);
        }
        b
    }

    #[test]
    fn records_round_trip_and_golden_bytes() {
        let b = framed(&[(4, b"abc"), (6, b"")]);
        assert_eq!(&b[..], &[4, 0, 0, 0, 4, b'a', b'b', b'c', 1, 0, 0, 0, 6]);
        let got: Vec<_> = records(&b).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(4u8, &b"abc"[..]), (6u8, &b""[..])]);
        assert_eq!(count_records(&b), Ok(2));
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let b = framed(&[(4, b"abc"), (6, b"xy")]);
        for cut in 1..b.len() {
            let n = records(&b[..cut]).filter(|r| r.is_err()).count();
            let ends_on_boundary = cut == 8;
            assert_eq!(n, usize::from(!ends_on_boundary), "cut at {cut}");
        }
    }

    #[test]
    fn impossible_lengths_and_foreign_types_are_refused() {
        assert!(matches!(count_records(&[0, 0, 0, 0, 4]), Err(EntryDataError::BadLength { .. })));
        assert!(matches!(count_records(&[0xff, 0xff, 0xff, 0xff, 4]), Err(EntryDataError::BadLength { .. })));
        assert!(matches!(count_records(&[1, 0, 0, 0, 240]), Err(EntryDataError::BadType { .. })));
        assert!(matches!(count_records(&[1, 0, 0, 0, 0]), Err(EntryDataError::BadType { .. })));
    }

    fn at(term: u64, pos: u64) -> IndexedEntry {
        IndexedEntry { term, header_pos: pos, end_pos: pos + 10 }
    }

    #[test]
    fn index_appends_truncates_and_compacts() {
        let mut ix = EntryIndex::starting_after(0, 0, 0);
        assert_eq!(ix.last_index(), 0);
        assert_eq!(ix.term(0), Some(0));
        for i in 1..=5 {
            assert_eq!(ix.push(i, at(1, i * 100)), Ok(None));
        }
        assert_eq!(ix.push(7, at(1, 700)), Err(IndexError::Gap { index: 7, last: 5 }));
        assert_eq!(ix.end_pos(3), 310);
        assert_eq!(ix.index_ending_by(315), 3);
        assert_eq!(ix.index_ending_by(5), 0);
        // A conflicting suffix from a new leader, written later in the log.
        assert_eq!(ix.push(4, at(2, 900)), Ok(Some(4)));
        assert_eq!(ix.last_index(), 4);
        assert_eq!(ix.term(4), Some(2));
        assert_eq!(ix.term(5), None);
        ix.compact_to(3);
        assert_eq!(ix.first_index(), 3);
        assert_eq!(ix.term(2), Some(1));
        assert_eq!(ix.end_pos(1), 210);
        assert_eq!(ix.push(2, at(1, 1000)), Err(IndexError::Compacted { index: 2, first: 3 }));
        ix.compact_to(10);
        assert_eq!((ix.first_index(), ix.last_index()), (10, 9));
        assert_eq!(ix.term(9), Some(2), "the last compacted entry's term is kept");
    }

    #[test]
    fn entry_start_keeps_the_header_of_an_entry_cut_by_a_segment_end() {
        let mut ix = EntryIndex::starting_after(0, 0, 0);
        ix.push(1, IndexedEntry { term: 1, header_pos: 100, end_pos: 300 }).unwrap();
        ix.push(2, IndexedEntry { term: 1, header_pos: 400, end_pos: 900 }).unwrap();
        assert_eq!(ix.entry_start(250), 100);
        assert_eq!(ix.entry_start(100), 100);
        assert_eq!(ix.entry_start(350), 350, "between entries");
        assert_eq!(ix.entry_start(50), 50);
        assert_eq!(ix.entry_start(5000), 5000);
        ix.forget_below(400);
        assert_eq!((ix.first_index(), ix.last_index()), (2, 2));
        assert_eq!(ix.term(1), Some(1));
    }

    #[test]
    fn cache_replaces_suffixes_and_trims_applied_entries_over_budget() {
        let e = |n: usize| CachedEntry { kind: EntryKind::Normal, data: Bytes::from(vec![0u8; n]), positions: vec![] };
        let mut c = EntryCache::default();
        c.put(5, e(10));
        c.put(6, e(10));
        c.put(7, e(10));
        c.put(6, e(3));
        assert!(c.get(7).is_none());
        assert_eq!(c.get(6).unwrap().data.len(), 3);
        assert_eq!(c.bytes(), 13);
        c.trim(100, 6);
        assert!(c.get(5).is_none(), "below keep_from");
        assert!(c.get(6).is_some(), "within budget");
        c.put(7, e(ENTRY_CACHE_BYTES_MAX));
        c.trim(6, 0);
        assert!(c.get(6).is_none() && c.get(7).is_some(), "over budget: applied ones go, unapplied stay");
        c.put_fetched(3, e(1));
        assert!(c.get(3).is_some() && c.get(7).is_some(), "a fetched old entry leaves newer ones alone");
    }
}
