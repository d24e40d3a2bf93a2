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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Outbox entries handed out in one loop turn, at most: the work of a
/// turn must not grow with the backlog (after a restart every pending entry
/// is due at once).
pub const OUTBOX_DUE_PER_TURN_MAX: usize = 1024;

/// Body bytes handed out in one loop turn, at most (each transfer carries
/// its body to the destination; one entry always goes, however large).
pub const OUTBOX_DUE_BYTES_PER_TURN_MAX: u64 = 8 << 20;

/// The two ways an entry leaves: moved to a queue (on any shard) by a
/// transfer, or pushed to an HTTP endpoint by the push pool. Each has its
/// own schedule, so a push backlog waiting for a full pool never stands in
/// the way of transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Transfer,
    Push,
}

impl Lane {
    fn of(e: &OutboxEntry) -> Lane {
        if e.kind == crate::engine::record::transfer_kind::PUSH {
            Lane::Push
        } else {
            Lane::Transfer
        }
    }
}

/// The entries, and indexes that keep every per-turn question cheap: which
/// are due (by next send time), the lowest body position (counted, since
/// deliveries of one publish share a body), topic deliveries by
/// subscription and age (retention, unsubscribe), and entries per redrive
/// task. Entries change only through these methods, so the indexes always
/// match.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: BTreeMap<u64, OutboxEntry>,
    pub next_id: u64,
    /// (next_send_ms, id) per lane.
    due_transfers: BTreeSet<(u64, u64)>,
    due_pushes: BTreeSet<(u64, u64)>,
    /// Body position -> entries whose body is there.
    positions: BTreeMap<u64, u32>,
    /// Topic deliveries: (subscription target, created_ms, id).
    deliveries: BTreeSet<(u64, u64, u64)>,
    /// Redrive task -> its moves still pending.
    redrives: HashMap<u64, u32>,
}

impl Outbox {
    /// An empty outbox whose first id is `next_id`.
    pub fn starting_at(next_id: u64) -> Outbox {
        Outbox { next_id, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&OutboxEntry> {
        self.entries.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// Every pending id, in order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    pub fn insert(&mut self, id: u64, e: OutboxEntry) {
        self.remove(id);
        self.index(id, &e);
        self.entries.insert(id, e);
    }

    pub fn remove(&mut self, id: u64) -> Option<OutboxEntry> {
        let e = self.entries.remove(&id)?;
        self.unindex(id, &e);
        Some(e)
    }

    /// Changes an entry (any field) and re-indexes it.
    pub fn update(&mut self, id: u64, f: impl FnOnce(&mut OutboxEntry)) {
        let Some(mut e) = self.entries.remove(&id) else { return };
        self.unindex(id, &e);
        f(&mut e);
        self.index(id, &e);
        self.entries.insert(id, e);
    }

    fn index(&mut self, id: u64, e: &OutboxEntry) {
        self.lane_mut(Lane::of(e)).insert((e.next_send_ms, id));
        *self.positions.entry(e.body_pos).or_insert(0) += 1;
        if e.publish.is_some() {
            self.deliveries.insert((e.redrive, e.created_ms, id));
        } else if e.kind == crate::engine::record::transfer_kind::REDRIVE {
            *self.redrives.entry(e.redrive).or_insert(0) += 1;
        }
    }

    fn unindex(&mut self, id: u64, e: &OutboxEntry) {
        self.lane_mut(Lane::of(e)).remove(&(e.next_send_ms, id));
        if let Some(n) = self.positions.get_mut(&e.body_pos) {
            *n -= 1;
            if *n == 0 {
                self.positions.remove(&e.body_pos);
            }
        }
        if e.publish.is_some() {
            self.deliveries.remove(&(e.redrive, e.created_ms, id));
        } else if e.kind == crate::engine::record::transfer_kind::REDRIVE {
            if let Some(n) = self.redrives.get_mut(&e.redrive) {
                *n -= 1;
                if *n == 0 {
                    self.redrives.remove(&e.redrive);
                }
            }
        }
    }

    fn lane_mut(&mut self, lane: Lane) -> &mut BTreeSet<(u64, u64)> {
        match lane {
            Lane::Transfer => &mut self.due_transfers,
            Lane::Push => &mut self.due_pushes,
        }
    }

    fn lane(&self, lane: Lane) -> &BTreeSet<(u64, u64)> {
        match lane {
            Lane::Transfer => &self.due_transfers,
            Lane::Push => &self.due_pushes,
        }
    }

    /// The lowest id still pending (every id below it is finished).
    pub fn low_watermark(&self) -> u64 {
        self.entries.keys().next().copied().unwrap_or(self.next_id)
    }

    pub fn min_pos(&self) -> Option<u64> {
        self.positions.keys().next().copied()
    }

    /// Up to `max` entries of `lane` due at `now_ms`, earliest first, and
    /// at most [`OUTBOX_DUE_BYTES_PER_TURN_MAX`] of bodies (at least one
    /// entry); marks them sent (next attempt `resend_ms` later unless
    /// answered). The rest stay due for the next turn.
    pub fn take_due(&mut self, now_ms: u64, lane: Lane, max: usize, resend_ms: u64) -> Vec<(u64, OutboxEntry)> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while out.len() < max.min(OUTBOX_DUE_PER_TURN_MAX) {
            let Some(&(at, id)) = self.lane(lane).first() else { break };
            if at > now_ms {
                break;
            }
            let Some(e) = self.entries.get(&id) else {
                // Cannot happen (the index follows the entries); never loop on it.
                self.lane_mut(lane).remove(&(at, id));
                continue;
            };
            let size = u64::from(e.body_len) + u64::from(e.suffix_len);
            if !out.is_empty() && bytes + size > OUTBOX_DUE_BYTES_PER_TURN_MAX {
                break;
            }
            bytes += size;
            self.update(id, |e| e.next_send_ms = now_ms + resend_ms);
            if let Some(e) = self.entries.get(&id) {
                out.push((id, e.clone()));
            }
        }
        out
    }

    /// Sends the entry again at `at_ms` (not an attempt).
    pub fn send_at(&mut self, id: u64, at_ms: u64) {
        self.update(id, |e| e.next_send_ms = at_ms);
    }

    /// The destination refused for now: try again later, backing off.
    pub fn retry_later(&mut self, id: u64, now_ms: u64) {
        self.update(id, |e| {
            e.attempts = e.attempts.saturating_add(1);
            let backoff = 1000u64.saturating_mul(1 << e.attempts.min(6)).min(TRANSFER_BACKOFF_MAX_MS);
            e.next_send_ms = now_ms + backoff;
        });
    }

    /// When the next entry of `lane` is due.
    pub fn next_due(&self, lane: Lane) -> Option<u64> {
        self.lane(lane).first().map(|(at, _)| *at)
    }

    /// Topic deliveries pending.
    pub fn deliveries(&self) -> usize {
        self.deliveries.len()
    }

    /// Ids of the deliveries to subscription `target` created at or
    /// before `created_max_ms`, oldest first, at most `max`.
    pub fn deliveries_to(&self, target: u64, created_max_ms: u64, max: usize) -> Vec<u64> {
        self.deliveries.range((target, 0, 0)..=(target, created_max_ms, u64::MAX)).take(max).map(|k| k.2).collect()
    }

    /// Ids of every delivery to the subscription targets in `targets`.
    pub fn deliveries_in(&self, targets: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        let (first, last) = targets.into_inner();
        self.deliveries.range((first, 0, 0)..=(last, u64::MAX, u64::MAX)).map(|k| k.2).collect()
    }

    /// Whether moves of redrive task `id` are still pending.
    pub fn has_redrive(&self, id: u64) -> bool {
        self.redrives.contains_key(&id)
    }
}

/// Transfers this shard has applied, by (source shard, id), with where the
/// `TransferIn` record is (the log keeps it while the entry is needed).
/// Pruning below a source's watermark and the lowest position are
/// logarithmic: every received transfer prunes.
#[derive(Debug, Default)]
pub struct Inbound {
    applied: BTreeMap<(u16, u64), u64>,
    positions: BTreeSet<u64>,
}

impl Inbound {
    pub fn contains(&self, src: u16, id: u64) -> bool {
        self.applied.contains_key(&(src, id))
    }

    pub fn insert(&mut self, src: u16, id: u64, pos: u64) {
        if let Some(old) = self.applied.insert((src, id), pos) {
            self.positions.remove(&old);
        }
        self.positions.insert(pos);
    }

    /// The source has nothing pending below `below`: those entries can go.
    pub fn prune(&mut self, src: u16, below: u64) {
        while let Some((&key, &pos)) = self.applied.range((src, 0)..(src, below)).next() {
            self.applied.remove(&key);
            self.positions.remove(&pos);
        }
    }

    pub fn min_pos(&self) -> Option<u64> {
        self.positions.first().copied()
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
        o.insert(3, entry(100));
        o.insert(5, entry(50));
        assert_eq!(o.low_watermark(), 3);
        assert_eq!(o.min_pos(), Some(50));
        let t = Lane::Transfer;
        assert_eq!(o.take_due(0, t, usize::MAX, TRANSFER_RESEND_MS).len(), 2);
        assert!(o.take_due(1, t, usize::MAX, TRANSFER_RESEND_MS).is_empty(), "just sent");
        assert!(o.take_due(TRANSFER_RESEND_MS, Lane::Push, usize::MAX, TRANSFER_RESEND_MS).is_empty(), "other lane");
        assert_eq!(o.take_due(TRANSFER_RESEND_MS, t, 9, TRANSFER_RESEND_MS).len(), 2, "resent when unconfirmed");
        o.retry_later(3, 10_000);
        assert!(o.get(3).unwrap().next_send_ms > 10_000);
        for _ in 0..20 {
            o.retry_later(3, 10_000);
        }
        assert_eq!(o.get(3).unwrap().next_send_ms, 10_000 + TRANSFER_BACKOFF_MAX_MS);
        assert_eq!(o.next_due(t), Some(2 * TRANSFER_RESEND_MS), "entry 5 comes first");
        o.remove(5);
        assert_eq!((o.min_pos(), o.next_due(t)), (Some(100), Some(10_000 + TRANSFER_BACKOFF_MAX_MS)));
    }

    #[test]
    fn taking_due_entries_is_bounded_per_turn_by_count_and_bytes() {
        let mut o = Outbox::default();
        for id in 0..(OUTBOX_DUE_PER_TURN_MAX as u64 * 3) {
            o.insert(id, entry(id));
        }
        let first = o.take_due(0, Lane::Transfer, usize::MAX, 1000);
        assert_eq!(first.len(), OUTBOX_DUE_PER_TURN_MAX);
        assert_eq!(o.take_due(0, Lane::Transfer, 10, 1000).len(), 10, "the caller's bound");
        assert_eq!(o.next_due(Lane::Transfer), Some(0), "the rest stay due");
        let mut big = Outbox::default();
        for id in 0..4 {
            big.insert(id, OutboxEntry { body_len: (OUTBOX_DUE_BYTES_PER_TURN_MAX / 2) as u32, ..entry(id) });
        }
        assert_eq!(big.take_due(0, Lane::Transfer, usize::MAX, 1000).len(), 2, "bytes bound");
        let mut huge = Outbox::default();
        huge.insert(1, OutboxEntry { body_len: u32::MAX, ..entry(1) });
        assert_eq!(huge.take_due(0, Lane::Transfer, usize::MAX, 1000).len(), 1, "one always goes");
    }

    #[test]
    fn indexes_follow_updates_and_removals() {
        let mut o = Outbox::default();
        let meta = Arc::new(PublishMeta {
            topic: "t".into(),
            msg_id: 1,
            tags: Vec::new(),
            routing_key: String::new(),
            publish_ms: 0,
        });
        let push = |created_ms, target| OutboxEntry {
            kind: crate::engine::record::transfer_kind::PUSH,
            redrive: target,
            publish: Some(meta.clone()),
            created_ms,
            ..entry(7)
        };
        o.insert(1, push(10, topic_target(1, 1)));
        o.insert(2, push(20, topic_target(1, 1)));
        o.insert(3, push(5, topic_target(1, 2)));
        o.insert(4, OutboxEntry { kind: crate::engine::record::transfer_kind::REDRIVE, redrive: 9, ..entry(7) });
        assert_eq!((o.deliveries(), o.has_redrive(9)), (3, true));
        assert_eq!(o.deliveries_to(topic_target(1, 1), 15, 10), vec![1], "oldest first, up to the age");
        assert_eq!(o.deliveries_in(topic_target(1, 0)..=topic_target(1, u32::MAX)), vec![1, 2, 3]);
        assert_eq!(o.positions.get(&7), Some(&4), "one body, four entries");
        assert_eq!(o.take_due(0, Lane::Push, usize::MAX, 60_000).len(), 3);
        assert_eq!(o.next_due(Lane::Push), Some(60_000));
        // A push given up on moves to the transfer lane.
        o.update(2, |e| {
            e.kind = crate::engine::record::transfer_kind::PUBLISH;
            e.next_send_ms = 0;
        });
        assert_eq!(o.take_due(0, Lane::Transfer, usize::MAX, 1000).iter().map(|x| x.0).collect::<Vec<_>>(), [2, 4]);
        o.remove(4);
        assert!(!o.has_redrive(9));
        for id in [1, 2, 3] {
            o.remove(id);
        }
        assert!(o.is_empty() && o.positions.is_empty() && o.deliveries() == 0 && o.next_due(Lane::Push).is_none());
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
        i.prune(1, u64::MAX);
        assert_eq!((i.len(), i.min_pos()), (1, Some(20)));
    }
}
