//! The engine's view of the write-ahead log: append a record, get back where
//! its payload landed. The shard implements it over the real WAL; tests and
//! benchmarks use [`MemLog`].

use crate::engine::error::EngineError;
use cmq_protocol::ErrorCode;

/// How durable a record must be before the requests that produced it are
/// acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Written to the OS before the acknowledgement; flushed later (async
    /// queues, and receive-side records, whose loss only under-counts).
    Written,
    /// fdatasync'd before the acknowledgement (sync queues, queue metadata).
    Synced,
}

pub trait Log {
    /// Appends a record made of `parts`; returns the log position of the
    /// payload's first byte. Fails with STORAGE_UNAVAILABLE when the log
    /// cannot take writes.
    fn append(&mut self, rtype: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, EngineError>;

    /// The `len` bytes at log position `pos` (a body written earlier).
    fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError>;
}

/// An in-memory log: every record kept, positions are byte offsets as in the
/// real WAL. Can be told to fail, to test the engine's error paths.
#[derive(Default)]
pub struct MemLog {
    pub data: Vec<u8>,
    pub records: Vec<(u64, u8, Durability, usize)>,
    pub fail: bool,
}

impl MemLog {
    /// Bytes at `pos` (test helper: panics on a bad position).
    pub fn bytes(&self, pos: u64, len: u32) -> &[u8] {
        &self.data[pos as usize..pos as usize + len as usize]
    }

    /// Every record in order: (payload position, type, payload).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u8, &[u8])> {
        self.records.iter().map(|(pos, rtype, _, len)| (*pos, *rtype, &self.data[*pos as usize..*pos as usize + len]))
    }
}

impl Log for MemLog {
    fn append(&mut self, rtype: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, EngineError> {
        if self.fail {
            return Err(EngineError::new(ErrorCode::STORAGE_UNAVAILABLE, "storage unavailable (test)"));
        }
        // A small gap between records, as the real log's record header makes.
        self.data.extend_from_slice(&[0; 9]);
        let pos = self.data.len() as u64;
        let mut len = 0;
        for p in parts {
            self.data.extend_from_slice(p);
            len += p.len();
        }
        self.records.push((pos, rtype, durability, len));
        Ok(pos)
    }

    fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError> {
        self.data
            .get(pos as usize..pos as usize + len as usize)
            .ok_or_else(|| EngineError::new(ErrorCode::INTERNAL, format!("no data at log position {pos}")))
    }
}
