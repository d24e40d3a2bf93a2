//! Moving messages between queues that may live on different shards:
//! the sending side's outbox and the receiving side's duplicate filter.
//!
//! The source logs `TransferOut` (message out of its queue, into the outbox,
//! body copied into that record) and keeps sending it until the destination
//! confirms; the destination logs `TransferIn` unless it has already applied
//! `(source shard, id)`; the source then logs `TransferDone`. A crash
//! anywhere leaves either the outbox entry (resent after restart, filtered
//! if it had arrived) or the finished move: the message ends up in exactly
//! one queue. Ids grow per source shard, so the source tells destinations
//! the lowest id it still has pending and they forget everything below.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How long the source waits for a confirmation before sending again.
pub const TRANSFER_RESEND_MS: u64 = 5_000;

/// Longest wait between attempts after temporary refusals (destination full, busy).
pub const TRANSFER_BACKOFF_MAX_MS: u64 = 60_000;

/// What an HTTP push (or the JSON push body) needs to know about the
/// published message; shared by every delivery of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishMeta {
    pub topic: String,
    pub msg_id: u64,
    pub tags: Vec<String>,
    pub routing_key: String,
    pub publish_ms: u64,
}

/// One message on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub kind: u8,
    /// Redrive: the task id. Topic deliveries: (topic uid << 32) | subscription id.
    pub redrive: u64,
    /// The queue the message left (it goes back there if the destination refuses for good).
    pub src_uid: u32,
    pub dst_queue: String,
    /// Body in the log (inside the `TransferOut` record), followed by the origin.
    pub body_pos: u64,
    pub body_len: u32,
    pub suffix_len: u32,
    pub dequeue_count: u32,
    pub next_send_ms: u64,
    pub attempts: u32,
    /// Topic deliveries: the published message.
    pub publish: Option<Arc<PublishMeta>>,
    pub created_ms: u64,
}

/// The `redrive` field of a topic delivery.
pub fn topic_target(topic_uid: u32, sid: u32) -> u64 {
    (u64::from(topic_uid) << 32) | u64::from(sid)
}

#[derive(Debug, Default)]
pub struct Outbox {
    pub entries: BTreeMap<u64, OutboxEntry>,
    pub next_id: u64,
}

impl Outbox {
    /// The lowest id still pending (every id below it is finished).
    pub fn low_watermark(&self) -> u64 {
        self.entries.keys().next().copied().unwrap_or(self.next_id)
    }

    pub fn min_pos(&self) -> Option<u64> {
        self.entries.values().map(|e| e.body_pos).min()
    }

    /// Entries of the given kinds due for (re)sending at `now_ms`; marks
    /// them sent (next attempt `resend_ms` later unless answered).
    pub fn due(&mut self, now_ms: u64, kinds: &[u8], resend_ms: u64) -> Vec<(u64, OutboxEntry)> {
        let mut out = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            if e.next_send_ms <= now_ms && kinds.contains(&e.kind) {
                e.next_send_ms = now_ms + resend_ms;
                out.push((*id, e.clone()));
            }
        }
        out
    }

    /// The destination refused for now: try again later, backing off.
    pub fn retry_later(&mut self, id: u64, now_ms: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.attempts = e.attempts.saturating_add(1);
            let backoff = 1000u64.saturating_mul(1 << e.attempts.min(6)).min(TRANSFER_BACKOFF_MAX_MS);
            e.next_send_ms = now_ms + backoff;
        }
    }

    pub fn next_due(&self) -> Option<u64> {
        self.entries.values().map(|e| e.next_send_ms).min()
    }
}

/// Transfers this shard has applied, by (source shard, id), with where the
/// `TransferIn` record is (the log keeps it while the entry is needed).
#[derive(Debug, Default)]
pub struct Inbound {
    applied: HashMap<(u16, u64), u64>,
}

impl Inbound {
    pub fn contains(&self, src: u16, id: u64) -> bool {
        self.applied.contains_key(&(src, id))
    }

    pub fn insert(&mut self, src: u16, id: u64, pos: u64) {
        self.applied.insert((src, id), pos);
    }

    /// The source has nothing pending below `below`: those entries can go.
    pub fn prune(&mut self, src: u16, below: u64) {
        self.applied.retain(|(s, id), _| *s != src || *id >= below);
    }

    pub fn min_pos(&self) -> Option<u64> {
        self.applied.values().copied().min()
    }

    pub fn len(&self) -> usize {
        self.applied.len()
    }

    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pos: u64) -> OutboxEntry {
        OutboxEntry {
            kind: 1,
            redrive: 0,
            src_uid: 1,
            dst_queue: "d".into(),
            body_pos: pos,
            body_len: 1,
            suffix_len: 0,
            dequeue_count: 0,
            next_send_ms: 0,
            attempts: 0,
            publish: None,
            created_ms: 0,
        }
    }

    #[test]
    fn outbox_resends_until_confirmed_and_backs_off() {
        let mut o = Outbox { next_id: 10, ..Default::default() };
        assert_eq!(o.low_watermark(), 10);
        o.entries.insert(3, entry(100));
        o.entries.insert(5, entry(50));
        assert_eq!(o.low_watermark(), 3);
        assert_eq!(o.min_pos(), Some(50));
        assert_eq!(o.due(0, &[1], TRANSFER_RESEND_MS).len(), 2);
        assert!(o.due(1, &[1], TRANSFER_RESEND_MS).is_empty(), "just sent");
        assert!(o.due(TRANSFER_RESEND_MS, &[2], TRANSFER_RESEND_MS).is_empty(), "other kind");
        assert_eq!(o.due(TRANSFER_RESEND_MS, &[1], TRANSFER_RESEND_MS).len(), 2, "resent when unconfirmed");
        o.retry_later(3, 10_000);
        assert!(o.entries[&3].next_send_ms > 10_000);
        for _ in 0..20 {
            o.retry_later(3, 10_000);
        }
        assert_eq!(o.entries[&3].next_send_ms, 10_000 + TRANSFER_BACKOFF_MAX_MS);
    }

    #[test]
    fn inbound_filters_and_prunes_per_source() {
        let mut i = Inbound::default();
        i.insert(0, 1, 10);
        i.insert(0, 2, 20);
        i.insert(1, 1, 5);
        assert!(i.contains(0, 1) && !i.contains(0, 3));
        i.prune(0, 2);
        assert!(!i.contains(0, 1) && i.contains(0, 2) && i.contains(1, 1));
        assert_eq!(i.min_pos(), Some(5));
    }
}
