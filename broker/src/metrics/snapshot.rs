//! What a shard reports when asked for its metrics, and the broker-wide
//! view merged from every shard's report. A shard is asked through its
//! inbox (`ShardMsg::Stats`) and answers from its own thread, so nothing it
//! counts on the request path is shared.

use super::histogram::Histogram;
use super::latency::KINDS;
use super::queues::QueueTable;

/// One shard's metrics at the moment it answered.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: u16,
    /// Loop turns since start.
    pub turns: u64,
    /// (opcode, code, count); code 0 is success.
    pub answers: Vec<(u16, u16, u64)>,
    /// Request latency (µs) by kind (`latency::KIND_LABELS`).
    pub latency_us: [Histogram; KINDS],
    /// Answers not timed (the latency FIFO was full).
    pub untimed: u64,
    pub turn_us: Histogram,
    pub longest_turn_us: u64,
    /// Messages waiting in this shard's inbox.
    pub inbox_depth: u64,
    /// Open client connections.
    pub connections: u64,
    pub wal: WalSnapshot,
    pub queues: QueueTable,
    pub topics: u64,
    /// HTTP push outcomes by `shard::PUSH_RESULTS`.
    pub pushes: [u64; 3],
    pub pushes_deferred: u64,
    /// The last push failure of each subscription (`push_failures.rs`).
    pub push_failures: super::push_failures::PushFailures,
}

/// One shard's write-ahead log.
#[derive(Clone, Debug, Default)]
pub struct WalSnapshot {
    pub records: u64,
    pub bytes: u64,
    pub syncs: u64,
    pub sync_us: Histogram,
    pub sync_records: Histogram,
    pub segments: u64,
    /// Bytes the live segments take on disk (preallocated).
    pub disk_bytes: u64,
    /// The log refuses writes after a storage error.
    pub failed: bool,
}

/// A request for a shard's snapshot: the shard calls `reply` with it.
pub struct StatsRequest {
    /// How many queues it names (the rest are summed); None: no queue
    /// table at all (a health check: only proof that the loop turns).
    pub top_queues: Option<usize>,
    pub reply: Box<dyn FnOnce(ShardSnapshot) + Send>,
}

/// Every shard's snapshot, and the queue table merged across them.
#[derive(Clone, Debug, Default)]
pub struct BrokerSnapshot {
    /// By shard id; a shard that did not answer in time is missing.
    pub shards: Vec<ShardSnapshot>,
    pub queues: QueueTable,
}

impl BrokerSnapshot {
    /// Merges the shards' reports (their queue tables are moved out).
    pub fn merge(mut shards: Vec<ShardSnapshot>, top_queues: usize) -> BrokerSnapshot {
        shards.sort_by_key(|s| s.shard);
        let tables = shards.iter_mut().map(|s| std::mem::take(&mut s.queues)).collect();
        BrokerSnapshot { shards, queues: QueueTable::merge(tables, top_queues) }
    }
}
