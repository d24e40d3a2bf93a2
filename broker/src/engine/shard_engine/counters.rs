//! The numbers a shard hands out to new things: queue and topic uids,
//! subscription ids, message ids and redrive ids. Replay raises each past
//! every number a record carries, so a restarted shard never reuses one.

/// Next number of each kind (each starts at 1).
pub(super) struct Counters {
    pub(super) next_uid: u32,
    /// Subscription ids, shard-wide so that `(shard, sid)` names a
    /// subscription broker-wide (CMQ's `subscriptionId`).
    pub(super) next_sid: u32,
    /// Low bits of the next message id (the shard number is above them).
    pub(super) next_msg_counter: u64,
    pub(super) next_redrive: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters { next_uid: 1, next_sid: 1, next_msg_counter: 1, next_redrive: 1 }
    }
}
