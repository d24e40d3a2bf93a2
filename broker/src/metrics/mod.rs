//! Metrics: what each shard counts on its own thread, how the HTTP thread
//! gathers it, and the `/metrics` page (docs/METRICS.md lists every family).
//!
//! No shared atomics or locks on the request path: a shard keeps plain
//! counters and histograms (`shard.rs`, `latency.rs`, and the WAL's
//! `wal.rs`) and copies them into a [`snapshot::ShardSnapshot`] when the
//! HTTP thread asks through its inbox; the HTTP thread merges the shards'
//! snapshots, adds what it can read itself (process, disk, the connection
//! counters shards already publish) and encodes the page (`encode.rs`).
//! Per-queue series are capped (`queues.rs`).

pub mod encode;
pub mod histogram;
pub mod latency;
pub mod process;
pub mod push_failures;
pub mod queues;
pub mod shard;
pub mod snapshot;
pub mod wal;
