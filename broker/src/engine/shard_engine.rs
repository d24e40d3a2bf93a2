//! All queues owned by one shard, and the operations on them.
//!
//! Every operation validates, builds a [`Record`], appends it to the [`Log`],
//! then applies it, so that a failed append changes nothing and replay after
//! a crash runs the same `apply` code. Time comes in as `now_ms`; nothing here
//! reads a clock or touches a file or socket.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use bytes::Bytes;
use cmq_protocol::limits::{BATCH_MSGS_MAX, POLLING_WAIT_SECONDS_MAX};
use cmq_protocol::names::validate_name;
use cmq_protocol::queue_attributes::VISIBILITY_TIMEOUT;
use cmq_protocol::{
    DeliveryHead, ErrorCode, FlushPolicy, MessageState, QueueAttributes, QueueAttributesUpdate, QueueInfo,
    ReceiptHandle,
};

use std::collections::BTreeMap;

use crate::engine::dedup;
use crate::engine::error::EngineError;
use crate::engine::fates::{Fate, Fates};
use crate::engine::message_index::FLAG_ORIGIN;
use crate::engine::queue::{Counts, Queue};
use crate::engine::receipt::ReceiptKeys;
use crate::engine::record::{
    body_spans, BodySpan, Deleted, Enqueued, LogRecord, QueueCreated, QueueDeleted, QueueUpdated, Received, Record,
    VisibilityChanged,
};
use crate::engine::record_log::{Durability, Log};
use crate::engine::redrive::Redrive;
use crate::engine::transfers::Lane;
use counters::Counters;
use exchange::Exchange;
use log_cursor::LogCursor;
use schedule::Schedule;

mod counters;
mod dead_letter;
mod dedup_windows;
mod digest;
mod exchange;
mod inspection;
mod keys;
mod log_cursor;
mod recovery;
mod schedule;
mod topics;
mod transactions;

pub use dead_letter::{InTransfer, OutTransfer};
pub use topics::{OutPush, PushResult};
pub use transactions::CheckDue;

/// How often retention is enforced on every queue.
const RETENTION_SWEEP_MS: u64 = 1000;

/// Waiter ids of one queue are compacted once this many accumulate.
const QUEUE_WAITER_IDS_COMPACT: usize = 1024;

/// Bits of a message id below the shard number.
pub const MSG_ID_SHARD_SHIFT: u32 = 56;

/// Messages dead-lettered per queue per loop turn, so a burst never stalls the shard.
const DEAD_LETTER_PER_TURN_MAX: usize = 1024;

/// A send or publish batch's shape: 1..=BATCH_MSGS_MAX bodies, and no keys
/// or one per body.
pub(crate) fn check_batch(bodies: &[Bytes], keys: &[Bytes]) -> Result<(), EngineError> {
    if bodies.is_empty() || bodies.len() > BATCH_MSGS_MAX {
        return Err(EngineError::new(
            ErrorCode::BATCH_TOO_LARGE,
            format!("msgBody: a batch holds 1-{BATCH_MSGS_MAX} messages, got {}", bodies.len()),
        ));
    }
    if !keys.is_empty() && keys.len() != bodies.len() {
        return Err(EngineError::invalid(format!(
            "idempotencyKeys: {} keys for {} messages (none, or one per message)",
            keys.len(),
            bodies.len()
        )));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub shard: u16,
    /// Shards of the broker (to find the shard of a destination queue).
    pub shard_count: u16,
    pub secret: [u8; 16],
    pub default_flush: FlushPolicy,
    /// Queues this shard may hold (TOO_MANY_QUEUES beyond).
    pub queues_max: usize,
}

/// A message handed to a consumer; its body is read from the log at
/// `body_pos`. With `origin`, a `MessageOrigin` follows the body in the log
/// and the delivered message id is the origin's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub head: DeliveryHead,
    pub body_pos: u64,
    pub body_len: u32,
    pub origin: bool,
    /// For a sync queue, the end of the message's body in the log: the
    /// delivery must not be acknowledged before the log is durable up to
    /// here (a consumer must never see a message a crash could take back).
    /// 0 for async queues.
    pub sync_end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveOutcome {
    Delivered(Vec<Delivery>),
    /// Nothing ready; the receiver waits as this waiter id until a message
    /// arrives ([`ShardEngine::serve_waiters`]) or its deadline passes
    /// ([`ShardEngine::expire_waiters`]).
    Waiting(u64),
    /// Nothing ready and no wait was asked for.
    Empty,
}

/// Whom a long poll answers, in the caller's terms: the engine keeps it
/// with the waiter and hands it back when the waiter is served, expires or
/// ends, so that each waiter lives in one place. The engine never reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaiterTag {
    /// The shard that holds the receiving connection.
    pub shard: u16,
    /// The caller's name for that connection (slot and generation).
    pub conn: (usize, u32),
    pub request_id: u64,
    /// A BatchReceiveMessage (else a ReceiveMessage).
    pub batch: bool,
}

struct Waiter {
    uid: u32,
    max: usize,
    tag: WaiterTag,
}

/// What a listing lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    Queues,
    Topics,
}

/// A queue (or topic) as it appears in a listing, with what is needed to merge pages
/// across shards in creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedQueue {
    pub create_seq: u64,
    pub created_ms: u64,
    pub queue_id: u64,
    pub name: String,
}

pub struct ShardEngine {
    cfg: EngineConfig,
    keys: ReceiptKeys,
    /// By uid; ordered so that every walk over the queues (sweeps,
    /// compaction, answers) goes in the same order on every replica.
    queues: BTreeMap<u32, Queue>,
    by_name: HashMap<String, u32>,
    /// By uid, ordered like `queues`.
    topics: BTreeMap<u32, crate::engine::topic::Topic>,
    topic_by_name: HashMap<String, u32>,
    redrives: BTreeMap<u64, Redrive>,
    /// Authentication keys (shard 0 only; see `engine/keys.rs`).
    keys_store: crate::engine::keys::KeyStore,
    /// Recent messages' fates (inspection).
    fates: Fates,
    /// Numbers for new queues, topics, subscriptions, messages, redrives.
    counters: Counters,
    /// Where the engine stands in its log.
    log_cursor: LogCursor,
    /// Messages leaving for other shards or endpoints, and those received.
    exchange: Exchange,
    /// Wakeups, sweeps and parked work.
    schedule: Schedule,
    waiters: HashMap<u64, Waiter>,
    waiter_deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    next_waiter_id: u64,
    to_serve: Vec<u32>,
    /// Every idempotency key of the queues' and topics' windows, in the
    /// order applied: what goes when (`engine/dedup.rs`).
    dedup_order: dedup::DedupOrder,
}

impl ShardEngine {
    pub fn new(cfg: EngineConfig) -> ShardEngine {
        ShardEngine {
            keys: ReceiptKeys::new(cfg.secret),
            cfg,
            queues: BTreeMap::new(),
            by_name: HashMap::new(),
            topics: BTreeMap::new(),
            topic_by_name: HashMap::new(),
            redrives: BTreeMap::new(),
            keys_store: Default::default(),
            fates: Fates::default(),
            counters: Counters::default(),
            log_cursor: LogCursor { scratch: Vec::with_capacity(256), ..LogCursor::default() },
            exchange: Exchange::default(),
            schedule: Schedule::default(),
            waiters: HashMap::new(),
            waiter_deadlines: BinaryHeap::new(),
            next_waiter_id: 1,
            to_serve: Vec::new(),
            dedup_order: Default::default(),
        }
    }

    pub fn shard(&self) -> u16 {
        self.cfg.shard
    }

    /// An empty engine with the same configuration (to rebuild from the log).
    pub fn fresh(&self) -> ShardEngine {
        let mut e = ShardEngine::new(self.cfg.clone());
        // Shard 0 republishes its keys when their version moves: a replaced
        // engine (rebuild, snapshot) must never look unchanged to it.
        e.keys_store.start_after(self.keys_store.version());
        e.dedup_order = dedup::DedupOrder::with_cap(self.dedup_order.cap());
        e
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    fn queue_id(&self, uid: u32) -> u64 {
        (u64::from(self.cfg.shard) << 32) | u64::from(uid)
    }

    fn subscription_id(&self, sid: u32) -> u64 {
        (u64::from(self.cfg.shard) << 32) | u64::from(sid)
    }

    fn lookup(&self, name: &str) -> Result<u32, EngineError> {
        self.by_name.get(name).copied().ok_or_else(|| EngineError::queue_not_found(name))
    }

    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, EngineError> {
        let uid = self.lookup(name)?;
        self.queues.get_mut(&uid).ok_or_else(|| EngineError::queue_not_found(name))
    }

    /// Appends a record; returns the log position of its payload and the
    /// offset of its (first) body within the payload. A record that cannot
    /// be encoded faithfully (a count or length past its field) is refused
    /// before anything is written: producers split long lists, so this is a
    /// bug, answered with INTERNAL rather than with a record replay cannot
    /// read. In debug and test builds every record is decoded again and
    /// compared with what was meant.
    fn log_record(
        &mut self,
        log: &mut impl Log,
        rec: &impl LogRecord,
        durability: Durability,
    ) -> Result<(u64, u32), EngineError> {
        let rtype = rec.rtype();
        let mut image = Vec::new();
        let (pos, offset) = rec
            .encode(&mut self.log_cursor.scratch, |parts| {
                if cfg!(debug_assertions) {
                    image = parts.concat();
                }
                log.append(rtype, parts, durability)
            })
            .map_err(|e| {
                log::error!("shard {}: refusing to log a record: {e}", self.cfg.shard);
                EngineError::new(ErrorCode::INTERNAL, format!("cannot log the change: {e}"))
            })?;
        if cfg!(debug_assertions) {
            if let Err(e) = rec.check_decodes_to(&image, offset) {
                panic!("a logged record does not decode to itself: {e}");
            }
        }
        let pos = pos?;
        self.note_log_pos(pos);
        Ok((pos, offset))
    }

    /// Log positions only grow: a record at or below the last one seen
    /// means the engine and its log disagree (state built from records the
    /// log no longer holds). Serving on would hand out wrong messages; the
    /// panic ends the process (see `main.rs`) and recovery rebuilds from
    /// the log.
    fn note_log_pos(&mut self, pos: u64) {
        assert!(
            pos > self.log_cursor.last_log_pos,
            "shard {}: log position {pos} after {}: the log went backwards under the engine",
            self.cfg.shard,
            self.log_cursor.last_log_pos
        );
        self.log_cursor.last_log_pos = pos;
    }

    fn data_durability(policy: FlushPolicy) -> Durability {
        match policy {
            FlushPolicy::Sync => Durability::Synced,
            FlushPolicy::Async => Durability::Written,
        }
    }

    // ---- queue management -------------------------------------------------

    pub fn create_queue(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        update: &QueueAttributesUpdate,
        create_seq: u64,
    ) -> Result<u64, EngineError> {
        validate_name("queueName", name).map_err(EngineError::invalid)?;
        if self.by_name.contains_key(name) {
            return Err(EngineError::new(ErrorCode::QUEUE_ALREADY_EXISTS, format!("queue {name:?} already exists")));
        }
        if self.queues.len() >= self.cfg.queues_max {
            return Err(EngineError::new(
                ErrorCode::TOO_MANY_QUEUES,
                format!("this shard already holds its limit of {} queues", self.cfg.queues_max),
            ));
        }
        let attrs = QueueAttributes::defaults(self.cfg.default_flush).updated(update).map_err(EngineError::invalid)?;
        if attrs.dead_letter_queue == name {
            return Err(EngineError::invalid("deadLetterQueueName: a queue cannot be its own dead-letter queue"));
        }
        let uid = self.counters.next_uid;
        let rec = Record::QueueCreated(QueueCreated {
            uid,
            time_ms: now_ms,
            create_seq,
            attrs: attrs.clone(),
            name: name.to_owned(),
        });
        self.log_record(log, &rec, Durability::Synced)?;
        self.apply_queue_created(uid, now_ms, create_seq, attrs, name.to_owned());
        Ok(self.queue_id(uid))
    }

    fn apply_queue_created(&mut self, uid: u32, time_ms: u64, create_seq: u64, attrs: QueueAttributes, name: String) {
        self.counters.next_uid = self.counters.next_uid.max(uid + 1);
        if let Some(q) = self.queues.get_mut(&uid) {
            q.attrs = attrs;
            return;
        }
        self.by_name.insert(name.clone(), uid);
        let mut q = Queue::new(uid, name, attrs, time_ms);
        q.create_seq = create_seq;
        self.queues.insert(uid, q);
    }

    /// The highest creation sequence number of this shard's queues.
    pub fn max_create_seq(&self) -> u64 {
        self.queues.values().map(|q| q.create_seq).max().unwrap_or(0)
    }

    /// Deletes a queue; returns the waiters that were waiting on it, which the
    /// caller answers with QUEUE_NOT_FOUND.
    pub fn delete_queue(&mut self, log: &mut impl Log, now_ms: u64, name: &str) -> Result<Vec<WaiterTag>, EngineError> {
        let uid = self.lookup(name)?;
        self.log_record(log, &Record::QueueDeleted(QueueDeleted { uid, time_ms: now_ms }), Durability::Synced)?;
        Ok(self.apply_queue_deleted(uid))
    }

    fn apply_queue_deleted(&mut self, uid: u32) -> Vec<WaiterTag> {
        let Some(q) = self.queues.remove(&uid) else {
            return Vec::new();
        };
        self.dedup_order.window_dropped(q.dedup.len());
        self.by_name.remove(&q.name);
        for r in self.redrives.values_mut().filter(|r| r.uid == uid) {
            r.state = cmq_protocol::RedriveState::Cancelled;
        }
        q.waiters.iter().filter_map(|id| self.waiters.remove(id)).map(|w| w.tag).collect()
    }

    pub fn set_queue_attributes(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        update: &QueueAttributesUpdate,
    ) -> Result<QueueInfo, EngineError> {
        let q = self.queue_mut(name)?;
        let uid = q.uid;
        let attrs = q.attrs.updated(update).map_err(EngineError::invalid)?;
        if attrs.dead_letter_queue == name {
            return Err(EngineError::invalid("deadLetterQueueName: a queue cannot be its own dead-letter queue"));
        }
        let rec = Record::QueueUpdated(QueueUpdated { uid, time_ms: now_ms, attrs: attrs.clone() });
        self.log_record(log, &rec, Durability::Synced)?;
        self.apply_queue_updated(uid, now_ms, attrs);
        self.queue_info(now_ms, name)
    }

    fn apply_queue_updated(&mut self, uid: u32, time_ms: u64, attrs: QueueAttributes) {
        if let Some(q) = self.queues.get_mut(&uid) {
            q.attrs = attrs;
            q.modified_ms = time_ms;
        }
    }

    pub fn queue_info(&mut self, now_ms: u64, name: &str) -> Result<QueueInfo, EngineError> {
        let shard = self.cfg.shard;
        let uid = self.lookup(name)?;
        if let Some(q) = self.queues.get_mut(&uid) {
            q.expire(now_ms);
        }
        self.note_work(uid);
        let q = self.queue_mut(name)?;
        let Counts { ready, delayed, in_flight, deleted, .. } = q.counts();
        Ok(QueueInfo {
            queue_id: (u64::from(shard) << 32) | u64::from(q.uid),
            queue: q.name.clone(),
            attributes: q.attrs.clone(),
            create_time_ms: q.created_ms,
            last_modify_time_ms: q.modified_ms,
            active_msg_num: ready,
            inactive_msg_num: in_flight,
            delay_msg_num: delayed,
            rewind_msg_num: deleted,
            min_msg_time_ms: q.min_msg_time_ms(),
            shard,
        })
    }

    /// Queues or topics whose names start with `prefix` and contain
    /// `contains` and that `visible` lets through (the caller's
    /// permissions): the total count and the first `take` in creation order.
    pub fn list(
        &self,
        what: Listed,
        prefix: &str,
        contains: &str,
        take: usize,
        visible: impl Fn(&str) -> bool,
    ) -> (u32, Vec<ListedQueue>) {
        let wanted = |name: &str| name.starts_with(prefix) && name.contains(contains) && visible(name);
        match what {
            Listed::Queues => {
                let all = self.queues.values().map(|q| (q.uid, q.name.as_str(), q.create_seq, q.created_ms));
                self.listing(all, wanted, take)
            }
            Listed::Topics => {
                let all = self.topics.values().map(|t| (t.uid, t.name.as_str(), t.create_seq, t.created_ms));
                self.listing(all, wanted, take)
            }
        }
    }

    /// The queues or topics `(uid, name, create_seq, created_ms)` whose
    /// name `wanted` accepts: the total count and the first `take` in
    /// creation order (a caller merging shards asks each for offset+limit).
    fn listing<'a>(
        &self,
        all: impl Iterator<Item = (u32, &'a str, u64, u64)>,
        wanted: impl Fn(&str) -> bool,
        take: usize,
    ) -> (u32, Vec<ListedQueue>) {
        let mut matching: Vec<ListedQueue> = all
            .filter(|(_, name, ..)| wanted(name))
            .map(|(uid, name, create_seq, created_ms)| ListedQueue {
                create_seq,
                created_ms,
                queue_id: self.queue_id(uid),
                name: name.to_owned(),
            })
            .collect();
        let total = matching.len() as u32;
        matching.sort_by_key(|l| (l.create_seq, l.created_ms, l.queue_id));
        matching.truncate(take);
        (total, matching)
    }

    // ---- messages ---------------------------------------------------------

    /// Sends bodies (all or none); returns their message ids in order.
    pub fn send(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        delay_seconds: u32,
        bodies: &[Bytes],
    ) -> Result<Vec<u64>, EngineError> {
        self.send_keyed(log, now_ms, name, delay_seconds, bodies, &[])
    }

    /// [`ShardEngine::send`] with idempotency keys. `keys` is empty or holds one idempotency key per body (empty: none):
    /// a body whose key the queue's dedup window holds, or that repeats an
    /// earlier key of the batch, is answered with that message's id and
    /// not stored (`dedup.rs`). When every body is such a repeat, nothing
    /// is logged.
    pub fn send_keyed(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        delay_seconds: u32,
        bodies: &[Bytes],
        keys: &[Bytes],
    ) -> Result<Vec<u64>, EngineError> {
        check_batch(bodies, keys)?;
        let n = bodies.len();
        let q = self.queue_mut(name)?;
        let fates = dedup::plan(&q.dedup, keys, bodies.len(), now_ms);
        let (fresh, fresh_keys) = dedup::fresh(&fates, bodies, keys);
        if fresh.is_empty() {
            return Ok(dedup::answer(&fates, n, 0));
        }
        q.check_send(&fresh, delay_seconds)?;
        let uid = q.uid;
        let first_seq = q.next_seq();
        let durability = Self::data_durability(q.attrs.flush_policy);
        let first_msg_id = (u64::from(self.cfg.shard) << MSG_ID_SHARD_SHIFT) | self.counters.next_msg_counter;
        self.counters.next_msg_counter += fresh.len() as u64;
        let visible_at_ms = now_ms + u64::from(delay_seconds) * 1000;
        let rec = Enqueued {
            uid,
            first_seq,
            first_msg_id,
            enqueue_ms: now_ms,
            visible_at_ms,
            bodies: fresh,
            keys: fresh_keys,
        };
        let (pos, _) = self.log_record(log, &rec, durability)?;
        let spans = body_spans(rec.bodies.iter().map(|b| b.len() as u32));
        self.apply_enqueued(&rec, spans, pos, &rec.keys);
        Ok(dedup::answer(&fates, n, first_msg_id))
    }

    /// Applies an `Enqueued` record; `keys` go into the queue's dedup
    /// window (pass none for a record the loaded catalog already reflects).
    fn apply_enqueued<B>(
        &mut self,
        rec: &Enqueued<B>,
        spans: impl Iterator<Item = BodySpan>,
        pos: u64,
        keys: &[Bytes],
    ) {
        let Enqueued { uid, first_seq, first_msg_id, enqueue_ms, visible_at_ms, .. } = *rec;
        let mut n = 0;
        let Some(q) = self.queues.get_mut(&uid) else {
            return;
        };
        q.apply_enqueued(
            first_seq,
            first_msg_id,
            enqueue_ms,
            visible_at_ms,
            spans.map(|s| {
                n += 1;
                (pos + u64::from(s.offset), s.len)
            }),
        );
        let counter = (first_msg_id & ((1 << MSG_ID_SHARD_SHIFT) - 1)) + n;
        self.remember_keys((dedup::DedupOwner::Queue, uid), keys, first_msg_id, enqueue_ms);
        self.counters.next_msg_counter = self.counters.next_msg_counter.max(counter);
        if visible_at_ms > enqueue_ms {
            self.register_wakeup(uid);
        } else {
            self.note_ready(uid);
        }
    }

    /// Receives up to `max` messages, or registers a long-poll waiter
    /// (with a blank tag: see [`receive_for`](Self::receive_for)).
    pub fn receive(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        max: usize,
        polling_wait_seconds: Option<u32>,
    ) -> Result<ReceiveOutcome, EngineError> {
        self.receive_for(log, now_ms, name, max, polling_wait_seconds, WaiterTag::default())
    }

    /// Receives up to `max` messages, or registers a long-poll waiter that
    /// answers `tag`.
    pub fn receive_for(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        max: usize,
        polling_wait_seconds: Option<u32>,
        tag: WaiterTag,
    ) -> Result<ReceiveOutcome, EngineError> {
        if max == 0 || max > BATCH_MSGS_MAX {
            return Err(EngineError::new(
                ErrorCode::BATCH_TOO_LARGE,
                format!("numOfMsg: must be 1-{BATCH_MSGS_MAX}, got {max}"),
            ));
        }
        if let Some(w) = polling_wait_seconds {
            if w > POLLING_WAIT_SECONDS_MAX {
                return Err(EngineError::invalid(format!(
                    "pollingWaitSeconds: {w} exceeds {POLLING_WAIT_SECONDS_MAX}"
                )));
            }
        }
        let uid = self.lookup(name)?;
        let deliveries = self.deliver(log, now_ms, uid, max)?;
        if !deliveries.is_empty() {
            return Ok(ReceiveOutcome::Delivered(deliveries));
        }
        let Some(q) = self.queues.get_mut(&uid) else {
            return Err(EngineError::queue_not_found(name));
        };
        let wait = polling_wait_seconds.unwrap_or(q.attrs.polling_wait_seconds);
        if wait == 0 {
            return Ok(ReceiveOutcome::Empty);
        }
        let id = self.next_waiter_id;
        self.next_waiter_id += 1;
        q.waiters.push_back(id);
        self.waiters.insert(id, Waiter { uid, max, tag });
        self.waiter_deadlines.push(Reverse((now_ms + u64::from(wait) * 1000, id)));
        Ok(ReceiveOutcome::Waiting(id))
    }

    /// Picks, logs and applies a receive of up to `max` messages from queue `uid`.
    fn deliver(&mut self, log: &mut impl Log, now_ms: u64, uid: u32, max: usize) -> Result<Vec<Delivery>, EngineError> {
        let Some(q) = self.queues.get_mut(&uid) else {
            return Ok(Vec::new());
        };
        let seqs = q.pick_ready(max, now_ms);
        if !q.dead_letter_due.is_empty() || !q.checks_due.is_empty() {
            self.schedule.pending_work.push(uid);
        }
        let Some(q) = self.queues.get_mut(&uid) else {
            return Ok(Vec::new());
        };
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let visible_at_ms = now_ms + u64::from(q.attrs.visibility_timeout) * 1000;
        let rec = Record::Received(Received { uid, time_ms: now_ms, visible_at_ms, seqs });
        if let Err(e) = self.log_record(log, &rec, Durability::Written) {
            if let (Some(q), Record::Received(Received { seqs, .. })) = (self.queues.get_mut(&uid), &rec) {
                q.unpick(seqs);
            }
            return Err(e);
        }
        let Record::Received(Received { seqs, .. }) = rec else { unreachable!("built above") };
        let q = self.queues.get_mut(&uid).expect("queue looked up above");
        q.apply_received(now_ms, visible_at_ms, &seqs);
        self.register_wakeup(uid);
        let q = &self.queues[&uid];
        let sync = q.attrs.flush_policy == FlushPolicy::Sync;
        Ok(seqs
            .iter()
            .filter_map(|&seq| {
                let e = q.entry(seq)?;
                Some(Delivery {
                    head: DeliveryHead {
                        msg_id: e.msg_id,
                        receipt_handle: self.keys.issue(uid, seq, e.dequeue_count),
                        enqueue_time_ms: e.enqueue_ms,
                        first_dequeue_time_ms: e.first_dequeue_ms(),
                        next_visible_time_ms: e.visible_at_ms,
                        dequeue_count: e.dequeue_count,
                    },
                    body_pos: e.body_pos,
                    body_len: e.body_len,
                    origin: e.flags & FLAG_ORIGIN != 0,
                    sync_end: if sync { e.body_pos + u64::from(e.body_len) } else { 0 },
                })
            })
            .collect())
    }

    /// Deletes by receipt handle; one result per handle, in order. The outer
    /// error is for the request as a whole (unknown queue, storage failure).
    pub fn delete(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        handles: &[ReceiptHandle],
    ) -> Result<Vec<Result<(), EngineError>>, EngineError> {
        if handles.is_empty() || handles.len() > BATCH_MSGS_MAX {
            return Err(EngineError::new(
                ErrorCode::BATCH_TOO_LARGE,
                format!("receiptHandle: a batch holds 1-{BATCH_MSGS_MAX} handles, got {}", handles.len()),
            ));
        }
        let uid = self.lookup(name)?;
        let q = &self.queues[&uid];
        let mut seqs = Vec::with_capacity(handles.len());
        let results: Vec<Result<(), EngineError>> = handles
            .iter()
            .map(|h| {
                let seq = q.check_handle(&self.keys, *h, now_ms)?;
                if seqs.contains(&seq) {
                    return Err(EngineError::receipt_invalid());
                }
                seqs.push(seq);
                Ok(())
            })
            .collect();
        if !seqs.is_empty() {
            let durability = Self::data_durability(q.attrs.flush_policy);
            self.log_record(log, &Record::Deleted(Deleted { uid, seqs: seqs.clone() }), durability)?;
            if let Some(q) = self.queues.get_mut(&uid) {
                q.apply_deleted(&seqs);
            }
        }
        Ok(results)
    }

    /// Sets a received message's lease to end `timeout_s` from now; returns
    /// the (unchanged) handle and the new next-visible time.
    pub fn change_visibility(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        handle: ReceiptHandle,
        timeout_s: u32,
    ) -> Result<(ReceiptHandle, u64), EngineError> {
        if u64::from(timeout_s) > VISIBILITY_TIMEOUT.max {
            return Err(EngineError::invalid(format!(
                "visibilityTimeout: {timeout_s} exceeds {}",
                VISIBILITY_TIMEOUT.max
            )));
        }
        let uid = self.lookup(name)?;
        let seq = self.queues[&uid].check_handle(&self.keys, handle, now_ms)?;
        let visible_at_ms = now_ms + u64::from(timeout_s) * 1000;
        self.log_record(
            log,
            &Record::VisibilityChanged(VisibilityChanged { uid, seq, visible_at_ms }),
            Durability::Written,
        )?;
        self.apply_visibility(uid, seq, visible_at_ms);
        if timeout_s == 0 {
            if let Some(q) = self.queues.get_mut(&uid) {
                q.expire(now_ms);
            }
            self.note_work(uid);
            self.note_ready(uid);
        }
        Ok((handle, visible_at_ms))
    }

    fn apply_visibility(&mut self, uid: u32, seq: u64, visible_at_ms: u64) {
        if let Some(q) = self.queues.get_mut(&uid) {
            q.apply_visibility(seq, visible_at_ms);
            self.register_wakeup(uid);
        }
    }

    // ---- long polling and time --------------------------------------------

    fn note_ready(&mut self, uid: u32) {
        if self.queues.get(&uid).is_some_and(|q| !q.waiters.is_empty()) && !self.to_serve.contains(&uid) {
            self.to_serve.push(uid);
        }
    }

    fn register_wakeup(&mut self, uid: u32) {
        let Some(q) = self.queues.get_mut(&uid) else {
            return;
        };
        if let Some(d) = q.next_deadline() {
            if q.wakeup_registered.is_none_or(|r| d < r) {
                q.wakeup_registered = Some(d);
                self.schedule.wakeups.push(Reverse((d, uid)));
            }
        }
    }

    /// Hands ready messages to waiting receivers (call after every batch of
    /// operations and after [`tick`](Self::tick)). Returns each served waiter
    /// (id and tag) with its deliveries or the error its receive hit.
    #[allow(clippy::type_complexity)]
    pub fn serve_waiters(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
    ) -> Vec<(u64, WaiterTag, Result<Vec<Delivery>, EngineError>)> {
        let mut served = Vec::new();
        for uid in std::mem::take(&mut self.to_serve) {
            while let Some(q) = self.queues.get_mut(&uid) {
                q.expire(now_ms);
                let parked = !q.dead_letter_due.is_empty() || !q.checks_due.is_empty();
                if q.counts().ready == 0 {
                    if parked {
                        self.schedule.pending_work.push(uid);
                    }
                    break;
                }
                let Some(id) = q.waiters.pop_front() else {
                    break;
                };
                let Some(w) = self.waiters.remove(&id) else {
                    continue;
                };
                match self.deliver(log, now_ms, uid, w.max) {
                    Ok(d) if d.is_empty() => {
                        // Counted ready but nothing pickable: keep waiting.
                        self.waiters.insert(id, w);
                        if let Some(q) = self.queues.get_mut(&uid) {
                            q.waiters.push_front(id);
                        }
                        break;
                    }
                    result => served.push((id, w.tag, result)),
                }
            }
        }
        served
    }

    /// Waiters whose polling wait ended with nothing to deliver.
    pub fn expire_waiters(&mut self, now_ms: u64) -> Vec<(u64, WaiterTag)> {
        let mut expired = Vec::new();
        while let Some(Reverse((deadline, id))) = self.waiter_deadlines.peek().copied() {
            if deadline > now_ms {
                break;
            }
            self.waiter_deadlines.pop();
            if let Some(w) = self.waiters.remove(&id) {
                expired.push((id, w.tag));
                self.compact_waiter_ids(w.uid);
            }
        }
        expired
    }

    /// Forgets the waiters whose tag `gone` picks (their connection went away).
    pub fn cancel_waiters(&mut self, gone: impl Fn(&WaiterTag) -> bool) {
        let mut ids: Vec<u64> = self.waiters.iter().filter(|(_, w)| gone(&w.tag)).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(w) = self.waiters.remove(&id) {
                self.compact_waiter_ids(w.uid);
            }
        }
    }

    /// Ends every waiter (this engine stops serving them), oldest first.
    pub fn take_waiters(&mut self) -> Vec<WaiterTag> {
        let mut all: Vec<(u64, Waiter)> = self.waiters.drain().collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        for w in &all {
            self.compact_waiter_ids(w.1.uid);
        }
        all.into_iter().map(|(_, w)| w.tag).collect()
    }

    fn compact_waiter_ids(&mut self, uid: u32) {
        let Some(q) = self.queues.get_mut(&uid) else {
            return;
        };
        while q.waiters.front().is_some_and(|id| !self.waiters.contains_key(id)) {
            q.waiters.pop_front();
        }
        if q.waiters.len() > QUEUE_WAITER_IDS_COMPACT {
            q.waiters.retain(|id| self.waiters.contains_key(id));
        }
    }

    /// Runs due timers: leases that ended, delays that passed, retention,
    /// dead-letter moves, transaction checks, redrive steps.
    pub fn tick(&mut self, log: &mut impl Log, now_ms: u64) {
        while let Some(Reverse((d, uid))) = self.schedule.wakeups.peek().copied() {
            if d > now_ms {
                break;
            }
            self.schedule.wakeups.pop();
            let Some(q) = self.queues.get_mut(&uid) else {
                continue;
            };
            if q.wakeup_registered != Some(d) {
                continue;
            }
            q.wakeup_registered = None;
            if q.expire(now_ms) {
                self.note_ready(uid);
            }
            self.note_work(uid);
            self.register_wakeup(uid);
        }
        if now_ms >= self.schedule.next_retention_sweep_ms {
            self.schedule.next_retention_sweep_ms = now_ms + RETENTION_SWEEP_MS;
            self.sweep_retention(now_ms);
            self.sweep_topics(log, now_ms);
        }
        self.run_pending_work(log, now_ms);
        self.run_redrives(log, now_ms);
    }

    /// A follower's timers: what follows from the clock alone (leases
    /// ending, delays passing, retention) advances; nothing is logged. The
    /// moves and checks that follow (dead letters, transaction checks,
    /// redrives) are the leader's: they stay parked until this replica leads.
    pub fn tick_passive(&mut self, now_ms: u64) {
        while let Some(Reverse((d, uid))) = self.schedule.wakeups.peek().copied() {
            if d > now_ms {
                break;
            }
            self.schedule.wakeups.pop();
            let Some(q) = self.queues.get_mut(&uid) else { continue };
            if q.wakeup_registered != Some(d) {
                continue;
            }
            q.wakeup_registered = None;
            q.expire(now_ms);
            self.note_work(uid);
            self.register_wakeup(uid);
        }
        if now_ms >= self.schedule.next_retention_sweep_ms {
            self.schedule.next_retention_sweep_ms = now_ms + RETENTION_SWEEP_MS;
            self.sweep_retention(now_ms);
        }
        // Parked work waits for leadership; keep one mention per queue.
        self.schedule.pending_work.sort_unstable();
        self.schedule.pending_work.dedup();
    }

    /// Once a second: topic deliveries past their topic's retention.
    fn sweep_topics(&mut self, log: &mut impl Log, now_ms: u64) {
        if !self.topics.is_empty() {
            self.expire_topic_deliveries(log, now_ms);
        }
    }

    fn sweep_retention(&mut self, now_ms: u64) {
        for (uid, q) in self.queues.iter_mut() {
            let expired = q.expire_retention(now_ms);
            if !expired.is_empty() {
                log::debug!("queue {:?}: {} messages passed msgRetentionSeconds", q.name, expired.len());
            }
            for msg_id in expired.into_iter().take(crate::engine::fates::FATES_MAX) {
                let fate = Fate { uid: *uid, state: MessageState::Expired, time_ms: now_ms };
                self.fates.record(msg_id, fate);
            }
            q.collect_ttl_expired(now_ms, DEAD_LETTER_PER_TURN_MAX);
            if !q.dead_letter_due.is_empty() {
                self.schedule.pending_work.push(*uid);
            }
        }
    }

    /// Removes confirmed outbox entries, counting topic deliveries.
    fn apply_transfer_done(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(e) = self.exchange.outbox.remove(*id) {
                self.topic_delivery_done(&e, true);
            }
        }
    }

    /// After anything that ran a queue's timers: parked dead-letter moves
    /// and due checks are handled at the end of the turn's timers.
    fn note_work(&mut self, uid: u32) {
        if self.queues.get(&uid).is_some_and(|q| !q.dead_letter_due.is_empty() || !q.checks_due.is_empty()) {
            self.schedule.pending_work.push(uid);
        }
    }

    /// Parked dead-letter moves and due transaction checks, queue by queue.
    fn run_pending_work(&mut self, log: &mut impl Log, now_ms: u64) {
        let mut uids = std::mem::take(&mut self.schedule.pending_work);
        uids.sort_unstable();
        uids.dedup();
        for uid in uids {
            self.dead_letter_parked(log, now_ms, uid);
            self.run_checks(log, now_ms, uid);
        }
    }

    /// The earliest time [`tick`](Self::tick), [`expire_waiters`](Self::expire_waiters)
    /// or the transfer outbox has work.
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        let wake = self.schedule.wakeups.peek().map(|r| r.0 .0);
        let wait = self.waiter_deadlines.peek().map(|r| r.0 .0);
        let work = (!self.schedule.pending_work.is_empty()).then_some(now_ms);
        let redrive = self.redrives.values().map(|r| r.next_due(now_ms)).min().filter(|d| *d != u64::MAX);
        let transfers = self.exchange.outbox.next_due(Lane::Transfer);
        // While the push pool is full, due pushes wait for it (or for an
        // outcome, which wakes the loop), not for the clock.
        let pushes = self.exchange.outbox.next_due(Lane::Push).map(|d| d.max(self.exchange.pushes_paused_until));
        [wake, wait, work, redrive, transfers, pushes, Some(self.schedule.next_retention_sweep_ms)]
            .into_iter()
            .flatten()
            .min()
    }

    /// For tests and metrics: a queue by name.
    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.by_name.get(name).and_then(|uid| self.queues.get(uid))
    }

    /// Approximate heap bytes of all message indexes.
    pub fn index_heap_bytes(&self) -> usize {
        self.queues.values().map(Queue::index_heap_bytes).sum()
    }
}

impl ReceiveOutcome {
    pub fn deliveries(self) -> Vec<Delivery> {
        match self {
            ReceiveOutcome::Delivered(d) => d,
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod order_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod dedup_tests;
