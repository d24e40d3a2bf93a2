//! The shard's queues and topics as its dedup order sees them: each one's
//! window of idempotency keys (`engine/dedup.rs`).

use std::borrow::{Borrow, BorrowMut};
use std::collections::BTreeMap;

use bytes::Bytes;

use super::ShardEngine;
use crate::engine::dedup::{self, DedupOwner, DedupWindow, Windows, WindowsMut};
use crate::engine::queue::Queue;
use crate::engine::topic::Topic;

/// Borrows of the queue and topic maps (shared or exclusive).
pub(super) struct Holders<Q, T> {
    pub queues: Q,
    pub topics: T,
}

impl<Q: Borrow<BTreeMap<u32, Queue>>, T: Borrow<BTreeMap<u32, Topic>>> Windows for Holders<Q, T> {
    fn window(&self, owner: DedupOwner, uid: u32) -> Option<&DedupWindow> {
        match owner {
            DedupOwner::Queue => self.queues.borrow().get(&uid).map(|q| &q.dedup),
            DedupOwner::Topic => self.topics.borrow().get(&uid).map(|t| &t.dedup),
        }
    }
}

impl<Q: BorrowMut<BTreeMap<u32, Queue>>, T: BorrowMut<BTreeMap<u32, Topic>>> WindowsMut for Holders<Q, T> {
    fn window_mut(&mut self, owner: DedupOwner, uid: u32) -> Option<&mut DedupWindow> {
        match owner {
            DedupOwner::Queue => self.queues.borrow_mut().get_mut(&uid).map(|q| &mut q.dedup),
            DedupOwner::Topic => self.topics.borrow_mut().get_mut(&uid).map(|t| &mut t.dedup),
        }
    }
}

impl ShardEngine {
    /// Puts the keys of a record stored from `first_msg_id` at `time_ms`
    /// into `owner`'s window, in the shard's order.
    pub(super) fn remember_keys(&mut self, owner: (DedupOwner, u32), keys: &[Bytes], first_msg_id: u64, time_ms: u64) {
        if keys.is_empty() {
            return;
        }
        let mut windows = Holders { queues: &mut self.queues, topics: &mut self.topics };
        dedup::remember(&mut self.dedup_order, &mut windows, owner, keys, first_msg_id, time_ms);
    }

    /// Keeps at most `max` idempotency keys instead of
    /// `IDEMPOTENCY_KEYS_PER_SHARD_MAX`, on a new engine: the simulator's
    /// knob to make evictions common. Every replica must use the same.
    pub fn limit_dedup_keys(&mut self, max: usize) {
        debug_assert!(self.dedup_order.is_empty(), "set on a new engine");
        self.dedup_order = dedup::DedupOrder::with_cap(max);
    }

    /// Every idempotency key the shard holds, in its order, with its
    /// window's entry (inspection: the simulator's divergence report).
    pub fn dedup_entries(&self) -> impl Iterator<Item = (dedup::OrderEntry, dedup::Seen)> + '_ {
        let windows = self.dedup_windows();
        let entries: Vec<_> = self.dedup_order.entries(&windows).collect();
        entries.into_iter()
    }

    /// The windows, read-only.
    pub(super) fn dedup_windows(&self) -> Holders<&BTreeMap<u32, Queue>, &BTreeMap<u32, Topic>> {
        Holders { queues: &self.queues, topics: &self.topics }
    }

    /// The windows, for the order to change.
    pub(super) fn dedup_windows_mut(&mut self) -> (&mut dedup::DedupOrder, impl WindowsMut + '_) {
        (&mut self.dedup_order, Holders { queues: &mut self.queues, topics: &mut self.topics })
    }
}
