//! The consensus layer's own log records.
//!
//! The engine owns record types 1..=239; this layer owns 240..=255. In the
//! write-ahead log a Raft entry is an [`ENTRY`](rtype::ENTRY) header record
//! followed by the entry's `records` records (engine records for a normal
//! entry, one [`CONF_CHANGE`](rtype::CONF_CHANGE) record for a
//! configuration change, none for an empty entry). Hard state and
//! configuration are records of their own, written whenever Raft changes
//! them; the last one in the log wins.
//!
//! Payload layouts (little-endian):
//! ```text
//! 240 Entry        term u64, index u64, prev_term u64, kind u8 (0 normal, 1 configuration
//!                  change, 2 void), flags u8 (1: sync), records u32, data_len u32
//! 241 HardState    term u64, vote u64, commit u64
//! 242 ConfState    voters [u64], learners [u64], voters_outgoing [u64], learners_next [u64], auto_leave u8
//! 243 ConfChange   the raft-rs ConfChangeV2 protobuf, as proposed
//! 244 Snapshot     index u64, term u64, catalog_index u64, conf_len u32, conf (as ConfState),
//!                  catalog (the rest: a catalog file's bytes)
//! ```
//! (`[u64]` is a u16 count, then the items.)

use cmq_protocol::error::DecodeError;
use cmq_protocol::wire::{Reader, Writer};

/// Record type bytes of this layer.
pub mod rtype {
    pub const ENTRY: u8 = 240;
    pub const HARD_STATE: u8 = 241;
    pub const CONF_STATE: u8 = 242;
    pub const CONF_CHANGE: u8 = 243;
    pub const SNAPSHOT: u8 = 244;
    /// The lowest type this layer owns; the engine's are below.
    pub const FIRST: u8 = 240;
}

/// Nodes in one configuration list. A cluster has a handful; the bound
/// keeps a corrupt record from allocating much.
pub const CONF_NODES_MAX: usize = 64;

/// Engine records in one entry (an entry is at most `ENTRY_BYTES_MAX`, and
/// every record takes at least its 5-byte frame).
pub const ENTRY_RECORDS_MAX: u32 = 1 << 24;

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Engine records (possibly none: a new leader's empty entry).
    Normal = 0,
    /// One `ConfChange` record.
    ConfChange = 1,
    /// Records Raft refused (this node stopped leading before it could
    /// propose them): never part of the Raft log, never applied.
    Void = 2,
}

impl EntryKind {
    fn from_u8(v: u8) -> Result<EntryKind, DecodeError> {
        match v {
            0 => Ok(EntryKind::Normal),
            1 => Ok(EntryKind::ConfChange),
            2 => Ok(EntryKind::Void),
            _ => Err(DecodeError::Invalid("entry kind")),
        }
    }
}

/// Entry flag: some record of the entry must be fdatasync'd before the
/// requests that produced it are acknowledged (a sync queue's data or
/// metadata), so a follower syncs it at once instead of within the flush
/// interval.
pub const FLAG_SYNC: u8 = 1;

/// The header record of one Raft entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub term: u64,
    pub index: u64,
    /// The term of entry `index - 1`: a log whose older segments were
    /// released still knows where it starts (Raft matches logs by the
    /// index and term of the entry before).
    pub prev_term: u64,
    pub kind: EntryKind,
    pub flags: u8,
    /// Records that follow the header and belong to the entry.
    pub records: u32,
    /// Length of the entry's data as Raft carries it (see `entry.rs`).
    pub data_len: u32,
}

impl EntryHeader {
    pub const PAYLOAD_BYTES: usize = 8 + 8 + 8 + 1 + 1 + 4 + 4;

    pub fn encode(&self) -> [u8; Self::PAYLOAD_BYTES] {
        let mut out = [0u8; Self::PAYLOAD_BYTES];
        out[0..8].copy_from_slice(&self.term.to_le_bytes());
        out[8..16].copy_from_slice(&self.index.to_le_bytes());
        out[16..24].copy_from_slice(&self.prev_term.to_le_bytes());
        out[24] = self.kind as u8;
        out[25] = self.flags;
        out[26..30].copy_from_slice(&self.records.to_le_bytes());
        out[30..34].copy_from_slice(&self.data_len.to_le_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<EntryHeader, DecodeError> {
        let mut r = Reader::new(bytes::Bytes::copy_from_slice(payload));
        let h = EntryHeader {
            term: r.u64("term")?,
            index: r.u64("index")?,
            prev_term: r.u64("prev_term")?,
            kind: EntryKind::from_u8(r.u8("kind")?)?,
            flags: r.u8("flags")?,
            records: r.u32("records")?,
            data_len: r.u32("data_len")?,
        };
        r.finish()?;
        if h.records > ENTRY_RECORDS_MAX {
            return Err(DecodeError::Invalid("entry record count"));
        }
        if h.index == 0 && h.kind != EntryKind::Void {
            return Err(DecodeError::Invalid("entry index 0"));
        }
        Ok(h)
    }
}

/// Raft's hard state as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardStateRecord {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

impl HardStateRecord {
    pub const PAYLOAD_BYTES: usize = 24;

    pub fn encode(&self) -> [u8; Self::PAYLOAD_BYTES] {
        let mut out = [0u8; Self::PAYLOAD_BYTES];
        out[0..8].copy_from_slice(&self.term.to_le_bytes());
        out[8..16].copy_from_slice(&self.vote.to_le_bytes());
        out[16..24].copy_from_slice(&self.commit.to_le_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<HardStateRecord, DecodeError> {
        let mut r = Reader::new(bytes::Bytes::copy_from_slice(payload));
        let h = HardStateRecord { term: r.u64("term")?, vote: r.u64("vote")?, commit: r.u64("commit")? };
        r.finish()?;
        Ok(h)
    }
}

/// A Raft configuration (who votes), as logged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfStateRecord {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

impl ConfStateRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        for list in [&self.voters, &self.learners, &self.voters_outgoing, &self.learners_next] {
            // CONF_NODES_MAX is far below u16::MAX; a longer list is a bug
            // caught by decode's bound on the way back.
            w.put_u16(list.len().min(u16::MAX as usize) as u16);
            for id in list.iter().take(u16::MAX as usize) {
                w.put_u64(*id);
            }
        }
        w.put_bool(self.auto_leave);
        w
    }

    pub fn decode(payload: &[u8]) -> Result<ConfStateRecord, DecodeError> {
        let mut r = Reader::new(bytes::Bytes::copy_from_slice(payload));
        let mut lists: [Vec<u64>; 4] = Default::default();
        for list in lists.iter_mut() {
            let n = r.count("conf nodes", CONF_NODES_MAX)?;
            for _ in 0..n {
                list.push(r.u64("node id")?);
            }
        }
        let auto_leave = r.bool("auto_leave")?;
        r.finish()?;
        let [voters, learners, voters_outgoing, learners_next] = lists;
        Ok(ConfStateRecord { voters, learners, voters_outgoing, learners_next, auto_leave })
    }
}

/// A snapshot a follower installed: the group's state at entry `index`
/// is the catalog (which reflects every queue-management record of entries
/// up to `catalog_index`, at or after `index`) plus the engine records of
/// the entries after `index` (see docs/ARCHITECTURE.md, "Snapshots").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub index: u64,
    pub term: u64,
    pub catalog_index: u64,
    pub conf: ConfStateRecord,
    pub catalog: bytes::Bytes,
}

impl SnapshotRecord {
    /// The fixed fields and the configuration; the catalog follows them.
    pub fn encode_head(&self) -> Vec<u8> {
        let conf = self.conf.encode();
        let mut w = Vec::with_capacity(28 + conf.len());
        w.put_u64(self.index);
        w.put_u64(self.term);
        w.put_u64(self.catalog_index);
        w.put_u32(conf.len() as u32);
        w.extend_from_slice(&conf);
        w
    }

    pub fn decode(payload: &[u8]) -> Result<SnapshotRecord, DecodeError> {
        let mut r = Reader::new(bytes::Bytes::copy_from_slice(payload));
        let index = r.u64("snapshot index")?;
        let term = r.u64("snapshot term")?;
        let catalog_index = r.u64("catalog index")?;
        let conf = ConfStateRecord::decode(&r.bytes("snapshot conf", 4 * 2 + 4 * CONF_NODES_MAX * 8 + 1)?)?;
        let catalog = bytes::Bytes::copy_from_slice(&payload[payload.len() - r.remaining()..]);
        if index == 0 {
            return Err(DecodeError::Invalid("snapshot index 0"));
        }
        Ok(SnapshotRecord { index, term, catalog_index, conf, catalog })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_header_round_trip_and_golden_bytes() {
        let h = EntryHeader {
            term: 3,
            index: 0x0102,
            prev_term: 2,
            kind: EntryKind::Normal,
            flags: FLAG_SYNC,
            records: 2,
            data_len: 40,
        };
        let b = h.encode();
        let golden: [u8; 34] = [
            3, 0, 0, 0, 0, 0, 0, 0, // term
            2, 1, 0, 0, 0, 0, 0, 0, // index
            2, 0, 0, 0, 0, 0, 0, 0, // prev_term
            0, 1, // kind, flags
            2, 0, 0, 0, // records
            40, 0, 0, 0, // data_len
        ];
        assert_eq!(b, golden);
        assert_eq!(EntryHeader::decode(&b).unwrap(), h);
        for cut in 0..b.len() {
            assert!(EntryHeader::decode(&b[..cut]).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn entry_header_rejects_impossible_values() {
        let mut b =
            EntryHeader { term: 1, index: 1, prev_term: 0, kind: EntryKind::Normal, flags: 0, records: 0, data_len: 0 }
                .encode();
        b[24] = 9;
        assert!(EntryHeader::decode(&b).is_err(), "unknown kind");
        let b =
            EntryHeader { term: 1, index: 0, prev_term: 0, kind: EntryKind::Normal, flags: 0, records: 0, data_len: 0 }
                .encode();
        assert!(EntryHeader::decode(&b).is_err(), "index 0");
        let v =
            EntryHeader { term: 0, index: 0, prev_term: 0, kind: EntryKind::Void, flags: 0, records: 3, data_len: 0 };
        assert_eq!(EntryHeader::decode(&v.encode()).unwrap(), v, "a void entry has no index");
    }

    #[test]
    fn hard_state_round_trip_and_truncation() {
        let h = HardStateRecord { term: 7, vote: 2, commit: 99 };
        let b = h.encode();
        assert_eq!(HardStateRecord::decode(&b).unwrap(), h);
        for cut in 0..b.len() {
            assert!(HardStateRecord::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn conf_state_round_trip_and_truncation() {
        let c = ConfStateRecord { voters: vec![1, 2, 3], learners: vec![4], auto_leave: true, ..Default::default() };
        let b = c.encode();
        assert_eq!(b[0..2], [3, 0]);
        assert_eq!(ConfStateRecord::decode(&b).unwrap(), c);
        for cut in 0..b.len() {
            assert!(ConfStateRecord::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn snapshot_record_round_trip_and_refusals() {
        let rec = SnapshotRecord {
            index: 9,
            term: 2,
            catalog_index: 12,
            conf: ConfStateRecord { voters: vec![1, 2, 3], ..Default::default() },
            catalog: bytes::Bytes::from_static(b"cmq-cat\nxyz"),
        };
        let mut payload = rec.encode_head();
        payload.extend_from_slice(&rec.catalog);
        assert_eq!(SnapshotRecord::decode(&payload).unwrap(), rec);
        for cut in 0..rec.encode_head().len() {
            assert!(SnapshotRecord::decode(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut zero = payload.clone();
        zero[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(SnapshotRecord::decode(&zero).is_err(), "index 0 is not a snapshot");
    }
}
