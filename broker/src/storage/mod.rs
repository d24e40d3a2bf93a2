//! Per-shard write-ahead log: segments, group commit, recovery.
