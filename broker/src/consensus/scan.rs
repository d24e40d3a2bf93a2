//! Reading a replica's state back from its log at start-up: which entries
//! it holds (index, term, where), its last hard state and configuration.
//! The caller feeds every record in log order; engine records are applied
//! later, entry by entry, up to the commit index.

use super::entry::{EntryIndex, IndexedEntry};
use super::records::{rtype, ConfStateRecord, EntryHeader, HardStateRecord, SnapshotRecord};

/// The last snapshot installed in the log: where its record lies, and what
/// it says.
#[derive(Debug, Clone)]
pub struct SnapshotBase {
    /// Where the snapshot record's payload starts and where it ends.
    pub pos: u64,
    pub end: u64,
    pub record: SnapshotRecord,
}

/// What the log says about the replica.
#[derive(Debug, Default)]
pub struct Scanned {
    pub index: EntryIndex,
    pub hard_state: HardStateRecord,
    pub conf: Option<ConfStateRecord>,
    /// Engine records before the first entry header: the tail of an entry
    /// whose header was released with its segment. Never applied.
    pub loose_records: u64,
    /// The last snapshot installed: every entry before it is forgotten.
    pub snapshot: Option<SnapshotBase>,
    /// Where the last hard-state record lies, and the last record carrying
    /// the configuration (a configuration or snapshot record).
    pub hard_state_pos: Option<u64>,
    pub conf_pos: Option<u64>,
}

/// A log that contradicts itself.
#[derive(Debug, thiserror::Error)]
#[error("log position {pos}: {msg}")]
pub struct ScanError {
    pub pos: u64,
    pub msg: String,
}

/// The entry whose records are being read.
struct Current {
    index: u64,
    header: EntryHeader,
    header_pos: u64,
    left: u32,
    end: u64,
}

impl Current {
    fn void(&self) -> bool {
        self.header.kind == super::records::EntryKind::Void
    }
}

pub struct LogScanner {
    out: Scanned,
    current: Option<Current>,
    seen_entry: bool,
    /// An entry was indexed: a later gap in indices is an error, not a
    /// released prefix.
    indexed_any: bool,
    /// The index restarted at the first entry after a released prefix (not
    /// at a snapshot): entries it holds may be a stale suffix that a later
    /// leader's entries, with lower indices, replaced.
    after_released: bool,
    /// A single node's log: records are applied as they come (entries only
    /// number them), so a record `--repair` cut out of an entry, or an
    /// entry header it cut, is no reason to refuse the rest.
    tolerant: bool,
}

impl Default for LogScanner {
    fn default() -> Self {
        LogScanner {
            out: Scanned { index: EntryIndex::starting_after(0, 0, 0), ..Default::default() },
            current: None,
            seen_entry: false,
            indexed_any: false,
            after_released: false,
            tolerant: false,
        }
    }
}

impl LogScanner {
    /// A log whose entries start after a snapshot (or a released prefix).
    pub fn starting_after(index: u64, term: u64, end_pos: u64) -> LogScanner {
        LogScanner {
            out: Scanned { index: EntryIndex::starting_after(index, term, end_pos), ..Default::default() },
            current: None,
            seen_entry: index > 0,
            indexed_any: index > 0,
            after_released: false,
            tolerant: false,
        }
    }

    /// For a single node's log (see `tolerant`).
    pub fn tolerant() -> LogScanner {
        LogScanner { tolerant: true, ..LogScanner::default() }
    }

    /// One record: its payload position, the position just past it, its
    /// type and payload.
    pub fn record(&mut self, pos: u64, end: u64, rt: u8, payload: &[u8]) -> Result<(), ScanError> {
        let err = |msg: String| ScanError { pos, msg };
        match rt {
            rtype::ENTRY => {
                let header = EntryHeader::decode(payload).map_err(|e| err(format!("entry header: {e}")))?;
                // An entry still missing records was torn by a crash and
                // never acknowledged: the log went on after it.
                self.current = None;
                self.seen_entry = true;
                let c = Current { index: header.index, header, header_pos: pos, left: header.records, end };
                if c.left == 0 {
                    self.close(c).map_err(err)?;
                } else {
                    self.current = Some(c);
                }
            }
            rtype::HARD_STATE => {
                self.out.hard_state = HardStateRecord::decode(payload).map_err(|e| err(format!("hard state: {e}")))?;
                self.out.hard_state_pos = Some(pos);
            }
            rtype::CONF_STATE => {
                self.out.conf = Some(ConfStateRecord::decode(payload).map_err(|e| err(format!("configuration: {e}")))?);
                self.out.conf_pos = Some(pos);
            }
            rtype::SNAPSHOT => {
                let rec = SnapshotRecord::decode(payload).map_err(|e| err(format!("snapshot: {e}")))?;
                // The group's state at `rec.index` replaces everything
                // before: the entries after it follow this record.
                self.current = None;
                self.seen_entry = true;
                self.indexed_any = true;
                self.after_released = false;
                self.out.index = EntryIndex::starting_after(rec.index, rec.term, end);
                self.out.conf = Some(rec.conf.clone());
                self.out.conf_pos = Some(pos);
                self.out.hard_state.commit = self.out.hard_state.commit.max(rec.index);
                self.out.snapshot = Some(SnapshotBase { pos, end, record: rec });
            }
            _ => {
                let Some(mut c) = self.current.take() else {
                    if self.seen_entry && rt < rtype::FIRST && !self.tolerant {
                        return Err(err(format!("engine record (type {rt}) outside any entry")));
                    }
                    // Before the first header: the tail of an entry whose
                    // header was in a released segment (never needed:
                    // segments are released only below the header of the
                    // entry holding the oldest live record).
                    if rt < rtype::FIRST {
                        self.out.loose_records += 1;
                    }
                    return Ok(());
                };
                c.left -= 1;
                c.end = end;
                if c.left == 0 {
                    self.close(c).map_err(err)?;
                } else {
                    self.current = Some(c);
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, c: Current) -> Result<(), String> {
        if c.void() {
            return Ok(());
        }
        let gap = self.out.index.last_index() + 1 < c.index;
        if gap && (!self.indexed_any || self.tolerant) {
            // The log's older segments were released (or, alone, repair
            // cut an entry header): the index starts again here.
            self.out.index = EntryIndex::starting_after(c.index - 1, c.header.prev_term, c.header_pos);
            self.after_released |= !self.indexed_any;
        } else if self.after_released && c.index < self.out.index.first_index() {
            // The first entries after the released prefix were a stale
            // suffix (never committed) that this one, from a later leader,
            // replaces with everything after it; the entries it follows
            // were released (the simulator found a follower that could not
            // restart: seed 1796447600045).
            self.out.index = EntryIndex::starting_after(c.index - 1, c.header.prev_term, c.header_pos);
        }
        self.indexed_any = true;
        let e = IndexedEntry { term: c.header.term, header_pos: c.header_pos, end_pos: c.end };
        self.out.index.push(c.index, e).map(|_| ()).map_err(|e| e.to_string())
    }

    pub fn finish(self) -> Scanned {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::records::EntryKind;

    fn header(term: u64, index: u64, records: u32) -> Vec<u8> {
        EntryHeader { term, index, prev_term: 0, kind: EntryKind::Normal, flags: 0, records, data_len: 0 }
            .encode()
            .to_vec()
    }

    #[test]
    fn entries_truncations_and_torn_entries() {
        let mut s = LogScanner::default();
        let mut pos = 0;
        let mut feed = |s: &mut LogScanner, rt: u8, p: &[u8]| {
            pos += 100;
            s.record(pos, pos + 50, rt, p)
        };
        feed(&mut s, rtype::ENTRY, &header(1, 1, 2)).unwrap();
        feed(&mut s, 4, b"a").unwrap();
        feed(&mut s, 4, b"b").unwrap();
        feed(&mut s, rtype::ENTRY, &header(1, 2, 0)).unwrap();
        feed(&mut s, rtype::HARD_STATE, &HardStateRecord { term: 1, vote: 1, commit: 2 }.encode()).unwrap();
        // Entry 3 torn after one of its two records; the log went on.
        feed(&mut s, rtype::ENTRY, &header(1, 3, 2)).unwrap();
        feed(&mut s, 4, b"c").unwrap();
        // A new leader's entry 2 replaces 2 and everything after.
        feed(&mut s, rtype::ENTRY, &header(2, 2, 1)).unwrap();
        feed(&mut s, 4, b"d").unwrap();
        let out = s.finish();
        assert_eq!(out.index.last_index(), 2);
        assert_eq!(out.index.term(2), Some(2));
        assert_eq!(out.index.get(1).unwrap().end_pos, 350);
        assert_eq!(out.hard_state.commit, 2);
        assert_eq!(out.loose_records, 0);
    }

    #[test]
    fn a_stale_suffix_after_a_released_prefix_is_replaced() {
        // Entries 20 and 21 (term 1) were released; 22 (term 1) was not, and
        // a term-2 leader's entries 20.. replaced it.
        let mut s = LogScanner::default();
        s.record(100, 150, rtype::ENTRY, &header(1, 22, 0)).unwrap();
        s.record(200, 250, rtype::ENTRY, &header(2, 20, 0)).unwrap();
        s.record(300, 350, rtype::ENTRY, &header(2, 21, 0)).unwrap();
        let out = s.finish();
        assert_eq!((out.index.first_index(), out.index.last_index()), (20, 21));
        assert_eq!(out.index.term(20), Some(2));
        // Without a released prefix, an entry below the first is an error.
        let mut s = LogScanner::starting_after(21, 1, 50);
        s.record(100, 150, rtype::ENTRY, &header(1, 22, 0)).unwrap();
        assert!(s.record(200, 250, rtype::ENTRY, &header(2, 20, 0)).is_err());
    }

    #[test]
    fn engine_records_outside_entries_are_legacy_only_before_the_first_entry() {
        let mut s = LogScanner::default();
        s.record(9, 20, 4, b"x").unwrap();
        s.record(29, 40, rtype::ENTRY, &header(1, 1, 0)).unwrap();
        assert!(s.record(49, 60, 4, b"y").is_err());
        assert_eq!(s.finish().loose_records, 1);
    }

    #[test]
    fn void_entries_and_their_records_are_skipped() {
        let mut s = LogScanner::default();
        s.record(9, 40, rtype::ENTRY, &header(1, 1, 1)).unwrap();
        s.record(49, 60, 4, b"a").unwrap();
        let void =
            EntryHeader { term: 0, index: 0, prev_term: 0, kind: EntryKind::Void, flags: 0, records: 2, data_len: 0 };
        s.record(69, 90, rtype::ENTRY, &void.encode()).unwrap();
        s.record(99, 110, 4, b"b").unwrap();
        s.record(119, 130, 4, b"c").unwrap();
        s.record(139, 160, rtype::ENTRY, &header(1, 2, 0)).unwrap();
        let out = s.finish();
        assert_eq!(out.index.last_index(), 2);
        assert_eq!(out.index.get(2).unwrap().header_pos, 139);
    }

    #[test]
    fn a_log_whose_start_was_released_starts_at_its_first_entry() {
        let mut s = LogScanner::default();
        s.record(9, 20, 4, b"tail of entry 33").unwrap();
        let h = EntryHeader {
            term: 2,
            index: 34,
            prev_term: 1,
            kind: EntryKind::Normal,
            flags: 0,
            records: 0,
            data_len: 0,
        };
        s.record(29, 60, rtype::ENTRY, &h.encode()).unwrap();
        s.record(69, 100, rtype::ENTRY, &header(2, 35, 0)).unwrap();
        let out = s.finish();
        assert_eq!((out.index.first_index(), out.index.last_index()), (34, 35));
        assert_eq!(out.index.term(33), Some(1));
        assert_eq!(out.loose_records, 1);
    }

    #[test]
    fn a_snapshot_replaces_the_entries_before_it() {
        let mut s = LogScanner::default();
        s.record(9, 40, rtype::ENTRY, &header(1, 1, 1)).unwrap();
        s.record(49, 60, 4, b"a").unwrap();
        let rec = SnapshotRecord {
            index: 7,
            term: 3,
            catalog_index: 9,
            conf: ConfStateRecord { voters: vec![1, 2, 4], ..Default::default() },
            catalog: bytes::Bytes::new(),
        };
        s.record(69, 100, rtype::SNAPSHOT, &rec.encode_head()).unwrap();
        s.record(109, 130, rtype::ENTRY, &header(3, 8, 0)).unwrap();
        let out = s.finish();
        assert_eq!((out.index.first_index(), out.index.last_index()), (8, 8));
        assert_eq!(out.index.term(7), Some(3));
        assert_eq!(out.index.end_pos(7), 100);
        assert_eq!(out.conf.unwrap().voters, vec![1, 2, 4]);
        assert_eq!(out.hard_state.commit, 7);
        assert_eq!(out.snapshot.unwrap().record.catalog_index, 9);
    }

    #[test]
    fn a_gap_in_indices_is_an_error() {
        let mut s = LogScanner::default();
        s.record(9, 40, rtype::ENTRY, &header(1, 1, 0)).unwrap();
        assert!(s.record(49, 80, rtype::ENTRY, &header(1, 3, 0)).is_err());
    }
}
