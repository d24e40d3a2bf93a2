//! Replay, catalogs and log space: what the shard's storage needs from the
//! engine to rebuild state after a restart and to delete old segments.

use bytes::Bytes;
use cmq_protocol::{MessageState, RedriveState};

use super::ShardEngine;
use crate::engine::catalog::{Catalog, CatalogDedup, CatalogQueue, CatalogRedrive, CatalogSubscription, CatalogTopic};
use crate::engine::error::EngineError;
use crate::engine::fates::Fate;
use crate::engine::message_index::{Entry, MsgState, FLAG_GROUP, FLAG_ORIGIN};
use crate::engine::queue::Queue;
use crate::engine::record::{
    rtype, transfer_kind, BodySpan, Deleted, Enqueued, HalfEnqueued, KeyDeleted, KeyPut, Published, Purged, PushGaveUp,
    PushRetry, QueueCreated, QueueDeleted, QueueUpdated, Received, Record, RecordError, RedriveEnded, RedriveStarted,
    Relocated, RelocatedEntry, Rewound, Subscribed, SubscriptionUpdated, TopicCreated, TopicDeleted, TopicUpdated,
    TransferDone, TransferIn, TransferOut, TransferReturned, TxChecked, TxEnded, Unsubscribed, VisibilityChanged,
};
use crate::engine::record_log::Log;
use crate::engine::redrive::Redrive;
use crate::engine::suffix;
use crate::engine::transfers::OutboxEntry;

impl ShardEngine {
    /// Installs a catalog before replay (see `catalog.rs`).
    pub fn load_catalog(&mut self, c: &Catalog) {
        self.log_cursor.catalog_pos = c.log_pos;
        self.counters.next_uid = self.counters.next_uid.max(c.next_uid);
        self.counters.next_sid = self.counters.next_sid.max(c.next_sid);
        self.counters.next_msg_counter = self.counters.next_msg_counter.max(c.next_msg_counter);
        self.exchange.outbox.next_id = self.exchange.outbox.next_id.max(c.next_transfer_id);
        self.counters.next_redrive = self.counters.next_redrive.max(c.next_redrive);
        for q in &c.queues {
            self.apply_queue_created(q.uid, q.created_ms, q.create_seq, q.attrs.clone(), q.name.clone());
            if let Some(queue) = self.queues.get_mut(&q.uid) {
                queue.modified_ms = q.modified_ms;
                queue.set_next_seq(q.next_seq);
            }
        }
        for t in &c.topics {
            self.apply_topic_created(TopicCreated {
                uid: t.uid,
                time_ms: t.created_ms,
                create_seq: t.create_seq,
                max_msg_size: t.max_msg_size,
                retention_s: t.retention_s,
                filter_type: t.filter_type,
                name: t.name.clone(),
            });
            for s in &t.subscriptions {
                self.apply_subscribed(t.uid, s.sid, s.created_ms, s.def.clone());
                if let Some(sub) = self.topics.get_mut(&t.uid).and_then(|x| x.subscription_by_sid(s.sid)) {
                    sub.modified_ms = s.modified_ms;
                }
            }
            if let Some(topic) = self.topics.get_mut(&t.uid) {
                topic.modified_ms = t.modified_ms;
            }
        }
        {
            let (order, mut windows) = self.dedup_windows_mut();
            for d in &c.dedup {
                order.restore(&mut windows, d.owner, d.uid, d.key, d.seen);
            }
        }
        for k in &c.keys {
            self.keys_store.put(k.clone());
        }
        for r in &c.redrives {
            let cursor = self.queues.get(&r.uid).map_or(0, |q| q.iter().next().map_or(0, |(s, _)| s));
            self.redrives.insert(
                r.id,
                Redrive {
                    id: r.id,
                    uid: r.uid,
                    to: r.to.clone(),
                    rate: r.rate,
                    end_seq: r.end_seq,
                    total: r.total,
                    moved: r.moved,
                    failed: r.failed,
                    state: r.state,
                    started_ms: r.started_ms,
                    finished_ms: r.finished_ms,
                    cursor,
                    tokens: 0.0,
                    refilled_ms: r.started_ms,
                    next_scan_ms: 0,
                    skipped: Default::default(),
                    failure: String::new(),
                },
            );
        }
    }

    /// A catalog of the current queues and redrives, valid for a log whose
    /// every record before `log_pos` has been applied (the caller passes the
    /// durable end).
    pub fn catalog(&self, log_pos: u64) -> Catalog {
        let mut queues: Vec<CatalogQueue> = self
            .queues
            .values()
            .map(|q| CatalogQueue {
                uid: q.uid,
                name: q.name.clone(),
                attrs: q.attrs.clone(),
                created_ms: q.created_ms,
                create_seq: q.create_seq,
                modified_ms: q.modified_ms,
                next_seq: q.next_seq(),
            })
            .collect();
        queues.sort_by_key(|q| q.uid);
        let redrives = self
            .redrives
            .values()
            .map(|r| CatalogRedrive {
                id: r.id,
                uid: r.uid,
                rate: r.rate,
                end_seq: r.end_seq,
                total: r.total,
                moved: r.moved,
                failed: r.failed,
                state: r.state,
                started_ms: r.started_ms,
                finished_ms: r.finished_ms,
                to: r.to.clone(),
            })
            .collect();
        let mut topics: Vec<CatalogTopic> = self
            .topics
            .values()
            .map(|t| CatalogTopic {
                uid: t.uid,
                name: t.name.clone(),
                created_ms: t.created_ms,
                create_seq: t.create_seq,
                modified_ms: t.modified_ms,
                max_msg_size: t.max_msg_size,
                retention_s: t.retention_s,
                filter_type: t.filter_type.as_u8(),
                subscriptions: t
                    .subscriptions
                    .iter()
                    .map(|s| CatalogSubscription {
                        sid: s.sid,
                        created_ms: s.created_ms,
                        modified_ms: s.modified_ms,
                        def: s.def.clone(),
                    })
                    .collect(),
            })
            .collect();
        topics.sort_by_key(|t| t.uid);
        let windows = self.dedup_windows();
        // Sized up front: up to a million keys, so no growing copies.
        let mut dedup: Vec<CatalogDedup> = Vec::with_capacity(self.dedup_order.len());
        dedup.extend(self.dedup_order.entries(&windows).map(|(e, seen)| CatalogDedup {
            owner: e.owner,
            uid: e.uid,
            key: e.key(),
            seen,
        }));
        Catalog {
            dedup,
            topics,
            log_pos,
            next_uid: self.counters.next_uid,
            next_msg_counter: self.counters.next_msg_counter,
            next_transfer_id: self.exchange.outbox.next_id,
            next_redrive: self.counters.next_redrive,
            next_sid: self.counters.next_sid,
            queues,
            redrives,
            keys: self.keys_store.iter().cloned().collect(),
        }
    }

    /// The lowest log position anything live depends on: message bodies,
    /// outbox entries, and transfer records the duplicate filter still needs.
    /// With the catalog's position it bounds what the log keeps.
    pub fn min_live_pos(&self) -> Option<u64> {
        let queues = self.queues.values().filter_map(Queue::min_live_pos).min();
        [queues, self.exchange.outbox.min_pos(), self.exchange.inbound.min_pos()].into_iter().flatten().min()
    }

    /// Approximate log bytes of live messages whose bodies lie below `pos`.
    pub fn live_bytes_below(&self, pos: u64) -> u64 {
        self.queues.values().map(|q| q.live_bytes_below(pos)).sum()
    }

    /// Compaction: copies up to `max` live messages whose bodies lie below
    /// `pos` to the head of the log with their whole state (and what follows
    /// their bodies), so the log below `pos` stops being needed. Returns how
    /// many were copied. Outbox entries and transfer records are short-lived
    /// and are waited for instead.
    pub fn relocate_below(&mut self, log: &mut impl Log, pos: u64, max: usize) -> Result<usize, EngineError> {
        let mut moved = 0;
        // In queue order, not the map's: relocations are records (the
        // simulator replays a seed exactly only if they come out the same).
        let mut uids: Vec<u32> = self.queues.keys().copied().collect();
        uids.sort_unstable();
        for uid in uids {
            let Some(q) = self.queues.get(&uid) else { continue };
            let durability = Self::data_durability(q.attrs.flush_policy);
            for (seq, e) in q.below(pos, max - moved) {
                let body = Bytes::copy_from_slice(log.read(e.body_pos, e.body_len)?);
                let suffix = Bytes::copy_from_slice(suffix::suffix_of(log, &e)?);
                let entry = RelocatedEntry {
                    msg_id: e.msg_id,
                    enqueue_ms: e.enqueue_ms,
                    visible_at_ms: e.visible_at_ms,
                    dequeue_count: e.dequeue_count,
                    first_dequeue_rel: e.first_dequeue_rel,
                    state: e.state as u8,
                    flags: e.flags,
                };
                let rec = Record::Relocated(Relocated { uid, seq, entry, body, suffix });
                let (at, offset) = self.log_record(log, &rec, durability)?;
                self.apply_relocated(uid, seq, entry, at + u64::from(offset), e.body_len);
                moved += 1;
            }
            if moved >= max {
                break;
            }
        }
        Ok(moved)
    }

    fn apply_relocated(&mut self, uid: u32, seq: u64, r: RelocatedEntry, body_pos: u64, body_len: u32) {
        let Some(state) = MsgState::from_u8(r.state) else { return };
        let Some(q) = self.queues.get_mut(&uid) else { return };
        let entry = Entry {
            msg_id: r.msg_id,
            body_pos,
            enqueue_ms: r.enqueue_ms,
            visible_at_ms: r.visible_at_ms,
            body_len,
            first_dequeue_rel: r.first_dequeue_rel,
            dequeue_count: r.dequeue_count,
            state,
            flags: r.flags,
        };
        q.install(seq, entry);
        self.register_wakeup(uid);
        self.note_ready(uid);
    }

    /// Installs a snapshot's catalog (taken on another replica) before the
    /// entries after the snapshot are applied. The catalog reflects every
    /// entry up to `catalog_entry`; those after `snapshot_end` (the local
    /// position where the snapshot's record ends) are applied here later,
    /// so their queue-management records and counters are skipped until
    /// entry `catalog_entry` is (`entry_applied`).
    pub fn load_snapshot_catalog(&mut self, c: &Catalog, catalog_entry: u64, snapshot_index: u64, snapshot_end: u64) {
        self.load_catalog(c);
        if catalog_entry > snapshot_index {
            self.log_cursor.catalog_pos = u64::MAX;
            self.log_cursor.catalog_entry = Some(catalog_entry);
        } else {
            self.log_cursor.catalog_pos = snapshot_end;
        }
    }

    /// Entry `index` is applied; it ends at `end_pos` in the local log.
    pub fn entry_applied(&mut self, index: u64, end_pos: u64) {
        if self.log_cursor.catalog_entry.is_some_and(|e| index >= e) {
            self.log_cursor.catalog_pos = end_pos;
            self.log_cursor.catalog_entry = None;
        }
    }

    /// A snapshot's catalog is ahead of the entries applied: a catalog
    /// taken now would be inconsistent.
    pub fn catalog_pending(&self) -> bool {
        self.log_cursor.catalog_entry.is_some()
    }

    /// Applies one record read back from the log at `pos`. Positions must
    /// grow, and a record from the catalog's position on must name a queue
    /// or topic that exists (before it, records of queues deleted before
    /// the catalog are expected, and skipped): either failing means the log
    /// and the engine disagree, and recovery stops rather than guess.
    pub fn replay(&mut self, pos: u64, rtype: u8, payload: &[u8]) -> Result<(), RecordError> {
        if pos <= self.log_cursor.last_log_pos {
            let reason = format!("log position {pos} after {}: positions must grow", self.log_cursor.last_log_pos);
            return Err(RecordError { rtype, reason });
        }
        self.log_cursor.last_log_pos = pos;
        let is_meta = matches!(
            rtype,
            rtype::QUEUE_CREATED
                | rtype::QUEUE_UPDATED
                | rtype::QUEUE_DELETED
                | rtype::REDRIVE_STARTED
                | rtype::REDRIVE_ENDED
                | rtype::TOPIC_CREATED
                | rtype::TOPIC_UPDATED
                | rtype::TOPIC_DELETED
                | rtype::SUBSCRIBED
                | rtype::SUBSCRIPTION_UPDATED
                | rtype::UNSUBSCRIBED
                | rtype::KEY_PUT
                | rtype::KEY_DELETED
        );
        if is_meta && pos < self.log_cursor.catalog_pos {
            return Ok(());
        }
        // Counters that the catalog already includes must not count twice.
        let counted = pos >= self.log_cursor.catalog_pos;
        let span_pos = |s: &BodySpan| pos + u64::from(s.offset);
        let suffix_of = |s: &BodySpan| &payload[(s.offset + s.len) as usize..];
        let rec = Record::decode(rtype, payload)?;
        if pos >= self.log_cursor.catalog_pos {
            self.check_known(&rec).map_err(|reason| RecordError { rtype, reason })?;
        }
        match rec {
            Record::QueueCreated(QueueCreated { uid, time_ms, create_seq, attrs, name }) => {
                self.apply_queue_created(uid, time_ms, create_seq, attrs, name)
            }
            Record::QueueUpdated(QueueUpdated { uid, time_ms, attrs }) => self.apply_queue_updated(uid, time_ms, attrs),
            Record::QueueDeleted(QueueDeleted { uid, .. }) => {
                self.apply_queue_deleted(uid);
            }
            Record::Enqueued(e) => {
                // Keys of records the catalog reflects are in its windows already.
                let keys = if counted { &e.keys[..] } else { &[] };
                self.apply_enqueued(&e, e.bodies.iter().copied(), pos, keys)
            }
            Record::Received(Received { uid, time_ms, visible_at_ms, seqs }) => {
                if let Some(q) = self.queues.get_mut(&uid) {
                    q.apply_received(time_ms, visible_at_ms, &seqs);
                    self.register_wakeup(uid);
                }
            }
            Record::Deleted(Deleted { uid, seqs }) => {
                if let Some(q) = self.queues.get_mut(&uid) {
                    q.apply_deleted(&seqs);
                }
            }
            Record::VisibilityChanged(VisibilityChanged { uid, seq, visible_at_ms }) => {
                self.apply_visibility(uid, seq, visible_at_ms)
            }
            Record::Relocated(Relocated { uid, seq, entry, body, .. }) => {
                self.apply_relocated(uid, seq, entry, span_pos(&body), body.len)
            }
            Record::Rewound(Rewound { uid, start_ms, .. }) => self.apply_rewound(uid, start_ms),
            Record::Purged(Purged { uid, time_ms }) => {
                self.apply_purged(uid, time_ms);
            }
            Record::HalfEnqueued(h) => self.apply_half_enqueued(&h, span_pos(&h.body), h.body.len),
            Record::TxChecked(TxChecked { uid, seq, count, next_ms }) => {
                if let Some(q) = self.queues.get_mut(&uid) {
                    q.apply_tx_checked(seq, count, next_ms);
                    self.register_wakeup(uid);
                }
            }
            Record::TxEnded(TxEnded { uid, seq, commit, time_ms }) => self.apply_tx_ended(uid, seq, commit, time_ms),
            Record::TransferOut(t) => {
                let out = OutboxEntry {
                    kind: t.kind,
                    redrive: t.redrive,
                    src_uid: t.src_uid,
                    dst_queue: t.dst_queue.clone(),
                    body_pos: span_pos(&t.body),
                    body_len: t.body.len,
                    suffix_len: suffix_of(&t.body).len() as u32,
                    dequeue_count: t.dequeue_count,
                    next_send_ms: 0,
                    attempts: 0,
                    publish: None,
                    created_ms: t.time_ms,
                };
                let original = suffix::origin_msg_id(suffix_of(&t.body));
                self.apply_transfer_out(&t, out, original, counted);
            }
            Record::TransferIn(t) => {
                let origin = suffix_of(&t.body);
                let original = suffix::origin_msg_id(origin);
                let entry = Entry {
                    msg_id: t.msg_id,
                    body_pos: span_pos(&t.body),
                    enqueue_ms: t.enqueue_ms,
                    visible_at_ms: t.enqueue_ms,
                    body_len: t.body.len,
                    first_dequeue_rel: 0,
                    dequeue_count: t.dequeue_count,
                    state: MsgState::Ready,
                    flags: if origin.is_empty() { 0 } else { FLAG_ORIGIN },
                };
                self.apply_transfer_in(&t, entry, original, pos);
            }
            Record::TransferDone(TransferDone { ids }) => self.apply_transfer_done(&ids),
            Record::TransferReturned(TransferReturned { id, uid, seq, msg_id, enqueue_ms }) => {
                self.apply_transfer_returned(id, uid, seq, msg_id, enqueue_ms, counted)
            }
            Record::RedriveStarted(r) => self.apply_redrive_started(r),
            Record::RedriveEnded(RedriveEnded { id, state, time_ms }) => self.apply_redrive_ended(id, state, time_ms),
            Record::TopicCreated(t) => self.apply_topic_created(t),
            Record::TopicUpdated(TopicUpdated { uid, time_ms, max_msg_size }) => {
                self.apply_topic_updated(uid, time_ms, max_msg_size)
            }
            Record::TopicDeleted(TopicDeleted { uid, .. }) => self.apply_topic_deleted(uid),
            Record::Subscribed(Subscribed { uid, sid, time_ms, def }) => self.apply_subscribed(uid, sid, time_ms, def),
            Record::SubscriptionUpdated(u) => self.apply_subscription_updated(u),
            Record::Unsubscribed(Unsubscribed { uid, sid, .. }) => self.apply_unsubscribed(uid, sid),
            Record::Published(mut p) => {
                let spans: Vec<(u64, u32)> = p.bodies.iter().map(|b| (span_pos(b), b.len)).collect();
                let (uid, first_msg_id, time_ms) = (p.uid, p.first_msg_id, p.time_ms);
                let keys = std::mem::take(&mut p.keys);
                self.apply_published(p, &spans);
                if counted {
                    self.remember_published_keys(uid, first_msg_id, time_ms, &keys);
                }
            }
            Record::PushRetry(PushRetry { entries }) => self.apply_push_retry(&entries),
            Record::PushGaveUp(PushGaveUp { id, time_ms }) => self.apply_push_gave_up(id, time_ms),
            Record::KeyPut(KeyPut { key, .. }) => self.keys_store.put(key),
            Record::KeyDeleted(KeyDeleted { name, .. }) => self.keys_store.delete(&name),
        }
        Ok(())
    }

    /// Whether the queue or topic `rec` changes exists.
    fn check_known(&self, rec: &Record<BodySpan>) -> Result<(), String> {
        let (what, uid, known) = match *rec {
            Record::QueueUpdated(QueueUpdated { uid, .. })
            | Record::QueueDeleted(QueueDeleted { uid, .. })
            | Record::Enqueued(Enqueued { uid, .. })
            | Record::Received(Received { uid, .. })
            | Record::Deleted(Deleted { uid, .. })
            | Record::VisibilityChanged(VisibilityChanged { uid, .. })
            | Record::Relocated(Relocated { uid, .. })
            | Record::Rewound(Rewound { uid, .. })
            | Record::Purged(Purged { uid, .. })
            | Record::HalfEnqueued(HalfEnqueued { uid, .. })
            | Record::TxChecked(TxChecked { uid, .. })
            | Record::TxEnded(TxEnded { uid, .. })
            | Record::TransferOut(TransferOut { src_uid: uid, .. })
            | Record::TransferIn(TransferIn { uid, .. })
            | Record::TransferReturned(TransferReturned { uid, .. })
            | Record::RedriveStarted(RedriveStarted { uid, .. }) => ("queue", uid, self.queues.contains_key(&uid)),
            Record::TopicUpdated(TopicUpdated { uid, .. })
            | Record::TopicDeleted(TopicDeleted { uid, .. })
            | Record::Subscribed(Subscribed { uid, .. })
            | Record::SubscriptionUpdated(SubscriptionUpdated { uid, .. })
            | Record::Unsubscribed(Unsubscribed { uid, .. })
            | Record::Published(Published { uid, .. }) => ("topic", uid, self.topics.contains_key(&uid)),
            // Creations, and records about transfers and redrives, which
            // may outlive what they name once older segments are released.
            Record::QueueCreated(QueueCreated { .. })
            | Record::TopicCreated(TopicCreated { .. })
            | Record::TransferDone(TransferDone { .. })
            | Record::RedriveEnded(RedriveEnded { .. })
            | Record::PushRetry(PushRetry { .. })
            | Record::PushGaveUp(PushGaveUp { .. })
            | Record::KeyPut(KeyPut { .. })
            | Record::KeyDeleted(KeyDeleted { .. }) => return Ok(()),
        };
        if known {
            Ok(())
        } else {
            Err(format!("{what} uid {uid} is unknown (never created, or deleted earlier in the log)"))
        }
    }

    pub(super) fn apply_rewound(&mut self, uid: u32, start_ms: u64) {
        if let Some(q) = self.queues.get_mut(&uid) {
            if q.apply_rewound(start_ms) > 0 || q.counts().ready > 0 {
                self.note_ready(uid);
            }
        }
    }

    pub(super) fn apply_purged(&mut self, uid: u32, time_ms: u64) -> u64 {
        let counter = self.counters.next_msg_counter;
        let Some(q) = self.queues.get_mut(&uid) else { return 0 };
        q.purged = Some((time_ms, counter));
        q.apply_purged()
    }

    pub(super) fn apply_half_enqueued<B>(&mut self, rec: &HalfEnqueued<B>, body_pos: u64, body_len: u32) {
        let HalfEnqueued { uid, seq, msg_id, enqueue_ms, check_at_ms, .. } = *rec;
        self.bump_msg_counter(msg_id);
        let Some(q) = self.queues.get_mut(&uid) else { return };
        let entry = Entry {
            msg_id,
            body_pos,
            enqueue_ms,
            visible_at_ms: check_at_ms,
            body_len,
            first_dequeue_rel: 0,
            dequeue_count: 0,
            state: MsgState::Half,
            flags: FLAG_GROUP,
        };
        q.install(seq, entry);
        self.register_wakeup(uid);
    }

    pub(super) fn apply_tx_ended(&mut self, uid: u32, seq: u64, commit: bool, time_ms: u64) {
        let Some(q) = self.queues.get_mut(&uid) else { return };
        let msg_id = q.entry(seq).map(|e| e.msg_id);
        if q.apply_tx_ended(seq, commit, time_ms) {
            if commit {
                self.note_ready(uid);
            } else if let Some(id) = msg_id {
                self.fates.record(id, Fate { uid, state: MessageState::RolledBack, time_ms });
            }
        }
    }

    /// A message leaves its queue for the outbox (one step: the record that
    /// does this is the move's commit point). Its fate is recorded under its
    /// original id (the one clients know).
    pub(super) fn apply_transfer_out<B>(
        &mut self,
        rec: &TransferOut<B>,
        out: OutboxEntry,
        original_msg_id: Option<u64>,
        counted: bool,
    ) {
        let TransferOut { id, src_seq, time_ms, .. } = *rec;
        self.exchange.outbox.next_id = self.exchange.outbox.next_id.max(id + 1);
        let (src_uid, kind, redrive) = (out.src_uid, out.kind, out.redrive);
        if let Some(q) = self.queues.get_mut(&src_uid) {
            if let Some(e) = q.take(src_seq) {
                let state =
                    if kind == transfer_kind::REDRIVE { MessageState::Redriven } else { MessageState::DeadLettered };
                let known_id = original_msg_id.unwrap_or(e.msg_id);
                self.fates.record(known_id, Fate { uid: src_uid, state, time_ms });
            }
        }
        if kind == transfer_kind::REDRIVE && counted {
            if let Some(r) = self.redrives.get_mut(&redrive) {
                r.moved += 1;
            }
        }
        self.exchange.outbox.insert(id, out);
    }

    /// A message arrives from another queue (deduplicated by source and id).
    pub(super) fn apply_transfer_in<B>(
        &mut self,
        rec: &TransferIn<B>,
        entry: Entry,
        original_msg_id: Option<u64>,
        pos: u64,
    ) {
        let TransferIn { src_shard, id, uid, seq, .. } = *rec;
        self.exchange.inbound.insert(src_shard, id, pos);
        self.bump_msg_counter(entry.msg_id);
        let Some(q) = self.queues.get_mut(&uid) else { return };
        q.install(seq, entry);
        if let Some(orig) = original_msg_id {
            q.note_origin(orig, seq);
        }
        self.note_ready(uid);
    }

    /// The destination refused for good: the message goes back to the queue it left.
    pub(super) fn apply_transfer_returned(
        &mut self,
        id: u64,
        uid: u32,
        seq: u64,
        msg_id: u64,
        enqueue_ms: u64,
        counted: bool,
    ) {
        let Some(out) = self.exchange.outbox.remove(id) else { return };
        self.bump_msg_counter(msg_id);
        if out.kind == transfer_kind::REDRIVE && counted {
            if let Some(r) = self.redrives.get_mut(&out.redrive) {
                r.failed += 1;
                r.moved = r.moved.saturating_sub(1);
                r.failure = format!("queue {:?} does not exist", out.dst_queue);
            }
        }
        let Some(q) = self.queues.get_mut(&uid) else { return };
        let entry = Entry {
            msg_id,
            body_pos: out.body_pos,
            enqueue_ms,
            visible_at_ms: enqueue_ms,
            body_len: out.body_len,
            first_dequeue_rel: 0,
            dequeue_count: out.dequeue_count,
            state: MsgState::Ready,
            flags: if out.suffix_len > 0 { FLAG_ORIGIN } else { 0 },
        };
        q.install(seq, entry);
        self.note_ready(uid);
    }

    pub(super) fn apply_redrive_started(&mut self, rec: RedriveStarted) {
        let RedriveStarted { id, uid, rate, end_seq, total, time_ms, to } = rec;
        self.counters.next_redrive =
            self.counters.next_redrive.max((id & ((1 << cmq_protocol::ops::REDRIVE_ID_SHARD_SHIFT) - 1)) + 1);
        let cursor = self.queues.get(&uid).and_then(|q| q.iter().next().map(|(s, _)| s)).unwrap_or(0);
        self.redrives.insert(
            id,
            Redrive {
                id,
                uid,
                to,
                rate,
                end_seq,
                total,
                moved: 0,
                failed: 0,
                state: RedriveState::Running,
                started_ms: time_ms,
                finished_ms: 0,
                cursor,
                tokens: 0.0,
                refilled_ms: time_ms,
                next_scan_ms: 0,
                skipped: Default::default(),
                failure: String::new(),
            },
        );
    }

    pub(super) fn apply_redrive_ended(&mut self, id: u64, state: u8, time_ms: u64) {
        if let Some(r) = self.redrives.get_mut(&id) {
            r.state = if state == 3 { RedriveState::Cancelled } else { RedriveState::Done };
            r.finished_ms = time_ms;
        }
    }

    pub(super) fn bump_msg_counter(&mut self, msg_id: u64) {
        let counter = msg_id & ((1 << super::MSG_ID_SHARD_SHIFT) - 1);
        self.counters.next_msg_counter = self.counters.next_msg_counter.max(counter + 1);
    }
}
