//! raft-rs's view of a replica's log: `raft::Storage` answered from the
//! in-memory entry index and entry cache. It never touches the disk: the
//! shard thread owns the log, and raft-rs calls `Storage` in the middle of
//! `step` and `ready`. Entries a lagging follower needs that the cache no
//! longer holds are fetched asynchronously (raft-rs's
//! `LogTemporarilyUnavailable` protocol): the replica reads them from the
//! log after the call and tells raft-rs they are there.

use std::cell::RefCell;

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::entry::{CachedEntry, EntryCache, EntryIndex};
use super::records::EntryKind;

/// A snapshot raft-rs may send: its metadata, and our description of it
/// (the data of a raft-rs `Snapshot`; the state itself is streamed apart).
#[derive(Debug, Clone, Default)]
pub struct PreparedSnapshot {
    pub index: u64,
    pub term: u64,
    pub conf: ConfState,
    pub data: bytes::Bytes,
}

#[derive(Default)]
pub struct RaftStore {
    pub index: EntryIndex,
    pub cache: EntryCache,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The snapshot raft-rs gets when a follower is behind the log.
    pub snapshot: Option<PreparedSnapshot>,
    /// Entries a follower needs that are not cached: `(low, high, context)`.
    pub wanted: RefCell<Option<(u64, u64, GetEntriesContext)>>,
    /// A follower needs a snapshot at or above this index.
    pub snapshot_wanted: RefCell<Option<u64>>,
    /// A follower whose log is empty gets a snapshot rather than entry 1:
    /// only a snapshot carries the group's configuration, and a node that
    /// joins with an empty configuration learns it no other way.
    pub snapshot_for_empty_logs: bool,
}

impl RaftStore {
    pub fn new(index: EntryIndex, hard_state: HardState, conf_state: ConfState) -> RaftStore {
        RaftStore { index, hard_state, conf_state, ..Default::default() }
    }

    fn entry(&self, index: u64, c: &CachedEntry) -> Option<Entry> {
        let entry_type = match c.kind {
            EntryKind::ConfChange => EntryType::EntryConfChangeV2,
            EntryKind::Normal | EntryKind::Void => EntryType::EntryNormal,
        };
        Some(Entry { index, term: self.index.term(index)?, entry_type, data: c.data.clone(), ..Default::default() })
    }
}

fn unavailable<T>() -> raft::Result<T> {
    Err(raft::Error::Store(StorageError::Unavailable))
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.index.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.index.last_index() + 1 {
            return unavailable();
        }
        // Only raft-rs's sends to a follower may fetch asynchronously. Not
        // before entry 1 is committed: no snapshot can be offered until then
        // (the leader would wait for one forever), and no joining node can be
        // a member yet (its addition commits entry 1 first), so a follower
        // with an empty log is one of the group's first voters, which know
        // the configuration (seed 1796451554568: the first leader's entry 1
        // to both followers was lost, and the group never committed).
        let committed = self.hard_state.commit >= 1;
        if self.snapshot_for_empty_logs && low <= 1 && committed && context.can_async() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(usize::try_from(high - low).unwrap_or(0).min(1024));
        let mut size = 0u64;
        for i in low..high {
            let Some(e) = self.cache.get(i).and_then(|c| self.entry(i, c)) else {
                if context.can_async() {
                    *self.wanted.borrow_mut() = Some((i, high, context));
                    return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
                }
                // Entries raft-rs asks for synchronously (committed, not yet
                // applied) are always cached: losing one here is a bug.
                log::error!("raft asked for entry {i} synchronously and it is not cached");
                return unavailable();
            };
            size += e.data.len() as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx + 1 < self.index.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.index.term(idx) {
            Some(t) => Ok(t),
            None => unavailable(),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.index.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.index.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            Some(s) if s.index >= request_index && s.index + 1 >= self.index.first_index() => {
                let mut meta = SnapshotMetadata { index: s.index, term: s.term, ..Default::default() };
                meta.set_conf_state(s.conf.clone());
                let mut snap = Snapshot { data: s.data.clone(), ..Default::default() };
                snap.set_metadata(meta);
                Ok(snap)
            }
            _ => {
                *self.snapshot_wanted.borrow_mut() = Some(request_index.max(1));
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::entry::IndexedEntry;
    use bytes::Bytes;

    fn store_with(n: u64) -> RaftStore {
        let mut s = RaftStore { index: EntryIndex::starting_after(0, 0, 0), ..Default::default() };
        for i in 1..=n {
            s.index.push(i, IndexedEntry { term: 1, header_pos: i * 100, end_pos: i * 100 + 50 }).unwrap();
            s.cache.put(
                i,
                CachedEntry { kind: EntryKind::Normal, data: Bytes::from(vec![i as u8; 10]), positions: vec![] },
            );
        }
        s
    }

    #[test]
    fn entries_come_from_the_cache_within_the_size_limit() {
        let s = store_with(5);
        let got = s.entries(2, 5, 25, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2, 3]);
        let got = s.entries(2, 5, 1, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.len(), 1, "at least one entry even over the limit");
        assert_eq!(got[0].data[0], 2);
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 5));
    }

    #[test]
    fn uncached_entries_are_fetched_asynchronously_when_allowed() {
        let mut s = store_with(5);
        s.cache.trim(u64::MAX, 4);
        let ctx = GetEntriesContext::empty(true);
        assert!(matches!(s.entries(2, 6, None, ctx), Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))));
        assert_eq!(s.wanted.borrow().as_ref().map(|(l, h, _)| (*l, *h)), Some((2, 6)));
        assert!(s.entries(2, 6, None, GetEntriesContext::empty(false)).is_err());
    }

    #[test]
    fn an_empty_log_gets_a_snapshot_only_once_entry_1_is_committed() {
        let mut s = store_with(3);
        s.snapshot_for_empty_logs = true;
        let ctx = || GetEntriesContext::empty(true);
        // Nothing committed: no snapshot could be offered; the first voters know the configuration.
        assert_eq!(s.entries(1, 4, None, ctx()).unwrap().len(), 3);
        s.hard_state.commit = 1;
        assert!(matches!(s.entries(1, 4, None, ctx()), Err(raft::Error::Store(StorageError::Compacted))));
        assert_eq!(s.entries(2, 4, None, ctx()).unwrap().len(), 2, "a log that is not empty gets entries");
    }

    #[test]
    fn compacted_entries_ask_for_a_snapshot() {
        let mut s = store_with(5);
        s.index.compact_to(4);
        assert!(matches!(
            s.entries(2, 5, None, GetEntriesContext::empty(true)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.term(3).unwrap(), 1, "the last compacted entry's term is known");
        assert!(matches!(s.snapshot(3, 2), Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))));
        assert_eq!(*s.snapshot_wanted.borrow(), Some(3));
        s.snapshot = Some(PreparedSnapshot { index: 3, term: 1, ..Default::default() });
        assert_eq!(s.snapshot(3, 2).unwrap().get_metadata().index, 3);
    }
}
