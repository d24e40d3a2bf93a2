//! What the shard has to do later, by time or on its next turn: queue
//! wakeups, the retention sweep, queues with parked work and transaction
//! checks to hand out. (Long-poll waiters and their deadlines are kept with
//! the waiters.)

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::CheckDue;

#[derive(Default)]
pub(super) struct Schedule {
    /// `(when, queue uid)`: a queue has messages that become ready then.
    pub(super) wakeups: BinaryHeap<Reverse<(u64, u32)>>,
    pub(super) next_retention_sweep_ms: u64,
    /// Queues with parked dead-letter moves or due checks.
    pub(super) pending_work: Vec<u32>,
    /// Transaction checks the shard should push to checkers.
    pub(super) checks: Vec<CheckDue>,
}
