//! Consensus: each shard's Raft group (tikv/raft-rs), behind our own types
//! so the shard loop, the engine and the tests never name the crate's.
//! See docs/ARCHITECTURE.md ("Replication") for the design.
//!
//! * `records.rs`: the log records of this layer (entry headers, hard state, configuration);
//! * `entry.rs`: entry data as Raft carries it, the entry index, the entry cache;
//! * `log.rs`: the log interface this layer needs, and the engine's `Log` that groups a turn's records into an entry;
//! * `state_records.rs`: where the hard state and configuration records lie (a release keeps them);
//! * `store.rs`: raft-rs's `Storage`, answered from memory;
//! * `release.rs`: how far a log may be released (the shard and the simulator share it);
//! * `replica.rs`: one replica: `RawNode` plus the Ready loop that ties it to the log and the engine.

pub mod conf_replay;
pub mod entry;
pub mod log;
mod logger;
pub mod readback;
pub mod records;
pub mod release;
pub mod replica;
pub mod scan;
pub mod state_records;
pub mod store;

pub use self::log::{EntryLog, LogFailure, RawLog};
pub use replica::{Applier, Event, Outbox, Replica, ReplicaConfig, ReplicaError};
