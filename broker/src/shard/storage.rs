//! The shard's log: the engine's `Log`, plus reading bodies back and the
//! group-commit batch cycle the event loop drives.
//!
//! Interim in-memory implementation: every submit completes at once. The
//! write-ahead log replaces the inside of this type without changing its
//! interface.

use crate::engine::{Durability, EngineError, Log, MemLog};

pub struct ShardLog {
    mem: MemLog,
    pending: bool,
    next_batch: u64,
    completed: Vec<(u64, Result<(), String>)>,
}

impl ShardLog {
    pub fn open_in_memory() -> ShardLog {
        ShardLog { mem: MemLog::default(), pending: false, next_batch: 1, completed: Vec::new() }
    }

    /// The bytes of a body written at `pos`.
    pub fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError> {
        self.mem.read(pos, len)
    }

    /// Whether records were appended since the last submit.
    pub fn has_pending(&self) -> bool {
        self.pending
    }

    /// Whether a new batch may be submitted now.
    pub fn can_submit(&self) -> bool {
        true
    }

    /// Starts writing (and, if needed, syncing) everything appended so far.
    pub fn submit(&mut self) -> u64 {
        let id = self.next_batch;
        self.next_batch += 1;
        self.pending = false;
        self.completed.push((id, Ok(())));
        id
    }

    /// Batches that finished since the last call, in order.
    pub fn poll_completions(&mut self, out: &mut Vec<(u64, Result<(), String>)>) {
        out.append(&mut self.completed);
    }

    /// Whether written-but-unsynced data waits for the periodic flush.
    pub fn needs_periodic_sync(&self) -> bool {
        false
    }

    pub fn submit_sync(&mut self) {}
}

impl Log for ShardLog {
    fn append(&mut self, rtype: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, EngineError> {
        self.pending = true;
        self.mem.append(rtype, parts, durability)
    }

    fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError> {
        self.mem.read(pos, len)
    }
}
