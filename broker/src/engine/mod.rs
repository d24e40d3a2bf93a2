//! The queue engine: pure state machines driven by requests, records and
//! time. No I/O happens here; the shard supplies a [`record_log::Log`] and the clock.

pub mod catalog;
pub mod codec;
pub mod dedup;
pub mod error;
pub mod fates;
pub mod filter;
pub mod keys;
pub mod message_index;
pub mod queue;
pub mod receipt;
pub mod record;
pub mod record_log;
pub mod redrive;
pub mod shard_engine;
pub mod suffix;
pub mod timers;
pub mod topic;
pub mod transfers;

pub use catalog::Catalog;
pub use error::EngineError;
pub use record_log::{Durability, Log, MemLog};
pub use shard_engine::{
    CheckDue, Delivery, EngineConfig, InTransfer, Listed, ListedQueue, OutPush, OutTransfer, PushResult,
    ReceiveOutcome, ShardEngine, WaiterTag,
};
