//! One queue's messages and their scheduling. Pure state: no I/O, no clock
//! (times are passed in), no logging (the shard engine logs a record and then
//! calls the matching `apply_*` here, live and at replay alike).
//!
//! Ready messages are found in sequence (≈ enqueue) order from two places: a
//! cursor that walks forward over the index, and a min-heap of messages that
//! became ready again behind the cursor (lease expired, delay passed,
//! rewound). Invariant: every Ready message has `seq >= cursor` or is in the
//! heap. Heap entries and timer entries may be stale; both are checked
//! against the message's current state before use.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use bytes::Bytes;
use cmq_protocol::{ErrorCode, QueueAttributes, ReceiptHandle};

use crate::engine::dedup::DedupWindow;
use crate::engine::error::EngineError;
use crate::engine::message_index::{Entry, MessageIndex, MsgState};
use crate::engine::receipt::ReceiptKeys;
use crate::engine::timers::Timers;

/// Messages per state, kept exact on every transition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    /// Deleted but kept for rewind.
    pub deleted: u64,
    /// Transaction messages awaiting commit or rollback.
    pub half: u64,
}

impl Counts {
    /// Messages that count against maxMsgHeapNum.
    pub fn backlog(&self) -> u64 {
        self.ready + self.delayed + self.in_flight + self.half
    }

    fn slot(&mut self, s: MsgState) -> Option<&mut u64> {
        match s {
            MsgState::Ready => Some(&mut self.ready),
            MsgState::Delayed => Some(&mut self.delayed),
            MsgState::InFlight => Some(&mut self.in_flight),
            MsgState::Deleted => Some(&mut self.deleted),
            MsgState::Half => Some(&mut self.half),
            MsgState::Removed => None,
        }
    }

    fn moved(&mut self, from: MsgState, to: MsgState) {
        if let Some(c) = self.slot(from) {
            *c -= 1;
        }
        if let Some(c) = self.slot(to) {
            *c += 1;
        }
    }
}

/// Messages that went through a queue, for metrics: counted as their
/// records are applied (so replay at start-up counts what the log still
/// holds, and the totals never fall behind what clients were told).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueTotals {
    /// Enqueued: sent, published to it, or moved in.
    pub sent: u64,
    /// Deliveries (a message received twice counts twice).
    pub received: u64,
    pub deleted: u64,
    /// Moved to the dead-letter queue.
    pub dead_lettered: u64,
}

/// Stale entries the origin map may hold before it is pruned.
const ORIGINS_SLACK: usize = 1024;

pub struct Queue {
    pub uid: u32,
    pub name: String,
    pub attrs: QueueAttributes,
    pub created_ms: u64,
    /// Broker-wide creation order (ListQueues sorts by it).
    pub create_seq: u64,
    pub modified_ms: u64,
    index: MessageIndex,
    next_seq: u64,
    cursor: u64,
    requeued: BinaryHeap<Reverse<u64>>,
    timers: Timers,
    /// Deleted-but-rewindable messages by enqueue time, to drop them exactly
    /// when they leave the rewind window.
    rewind_expiry: BinaryHeap<Reverse<(u64, u64)>>,
    counts: Counts,
    /// Long-polling receivers waiting on this queue, oldest first. Ids may be
    /// stale (the waiter timed out); the shard engine owns the live set.
    pub waiters: VecDeque<u64>,
    /// The deadline this queue is registered under in the shard's wakeup heap.
    pub wakeup_registered: Option<u64>,
    /// In-flight messages whose lease ended with maxReceiveCount reached:
    /// parked (invisible) until the shard engine moves them to the dead-letter queue.
    pub dead_letter_due: Vec<u64>,
    /// Half messages whose check time came.
    pub checks_due: Vec<u64>,
    /// Messages dropped by retention since the queue was created (or the broker started).
    pub expired_total: u64,
    /// Original message id → sequence number, for moved-in messages (whose
    /// local id differs). May hold stale entries; lookups check the index.
    pub origins: HashMap<u64, u64>,
    /// The last purge: (time, the shard's message counter then): ids below
    /// it that are no longer here were purged (or left earlier).
    pub purged: Option<(u64, u64)>,
    /// Messages through this queue (metrics).
    pub totals: QueueTotals,
    /// Recent idempotency keys of sends (`dedup.rs`).
    pub dedup: DedupWindow,
}

impl Queue {
    pub fn new(uid: u32, name: String, attrs: QueueAttributes, now_ms: u64) -> Queue {
        Queue {
            uid,
            name,
            attrs,
            created_ms: now_ms,
            create_seq: 0,
            modified_ms: now_ms,
            index: MessageIndex::new(0),
            next_seq: 0,
            cursor: 0,
            requeued: BinaryHeap::new(),
            timers: Timers::default(),
            rewind_expiry: BinaryHeap::new(),
            counts: Counts::default(),
            waiters: VecDeque::new(),
            wakeup_registered: None,
            dead_letter_due: Vec::new(),
            checks_due: Vec::new(),
            expired_total: 0,
            origins: HashMap::new(),
            purged: None,
            totals: QueueTotals::default(),
            dedup: DedupWindow::default(),
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn entry(&self, seq: u64) -> Option<&Entry> {
        self.index.get(seq)
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    pub fn index_heap_bytes(&self) -> usize {
        self.index.heap_bytes()
    }

    /// Whether a send of these bodies with this delay would be accepted.
    pub fn check_send(&self, bodies: &[Bytes], delay_seconds: u32) -> Result<(), EngineError> {
        for (i, b) in bodies.iter().enumerate() {
            if b.is_empty() {
                return Err(EngineError::invalid(format!("msgBody[{i}]: must not be empty")));
            }
            if b.len() > self.attrs.max_msg_size as usize {
                return Err(EngineError::new(
                    ErrorCode::MESSAGE_TOO_LARGE,
                    format!(
                        "msgBody[{i}]: {} bytes exceeds the queue's maxMsgSize {}",
                        b.len(),
                        self.attrs.max_msg_size
                    ),
                ));
            }
        }
        if delay_seconds > self.attrs.msg_retention_seconds {
            return Err(EngineError::invalid(format!(
                "delaySeconds: {delay_seconds} exceeds the queue's msgRetentionSeconds {}",
                self.attrs.msg_retention_seconds
            )));
        }
        if self.counts.backlog() + bodies.len() as u64 > self.attrs.max_msg_heap_num {
            return Err(EngineError::new(
                ErrorCode::QUEUE_FULL,
                format!("queue {:?} holds maxMsgHeapNum={} messages", self.name, self.attrs.max_msg_heap_num),
            ));
        }
        Ok(())
    }

    /// Adds messages `first_seq..` whose bodies are at the given log positions.
    pub fn apply_enqueued(
        &mut self,
        first_seq: u64,
        first_msg_id: u64,
        enqueue_ms: u64,
        visible_at_ms: u64,
        bodies: impl Iterator<Item = (u64, u32)>,
    ) {
        let state = if visible_at_ms > enqueue_ms { MsgState::Delayed } else { MsgState::Ready };
        for (i, (pos, len)) in bodies.enumerate() {
            let entry = Entry {
                msg_id: first_msg_id + i as u64,
                body_pos: pos,
                enqueue_ms,
                visible_at_ms,
                body_len: len,
                first_dequeue_rel: 0,
                dequeue_count: 0,
                state,
                flags: 0,
            };
            self.install(first_seq + i as u64, entry);
            self.totals.sent += 1;
        }
    }

    /// Puts a message at `seq` in whatever state `entry` says (replacing what
    /// is there), with the timer, ready-set and rewind bookkeeping that state needs.
    pub fn install(&mut self, seq: u64, entry: Entry) {
        if let Some(old) = self.index.get(seq) {
            self.counts.moved(old.state, MsgState::Removed);
        }
        self.index.insert(seq, entry);
        self.counts.moved(MsgState::Removed, entry.state);
        match entry.state {
            MsgState::Delayed | MsgState::InFlight | MsgState::Half => self.timers.push(entry.visible_at_ms, seq),
            MsgState::Ready if seq < self.cursor => self.requeued.push(Reverse(seq)),
            MsgState::Deleted => self.rewind_expiry.push(Reverse((entry.enqueue_ms, seq))),
            _ => {}
        }
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Takes a message out of the queue (moved elsewhere, purged, rolled
    /// back). Returns it if it was there.
    pub fn take(&mut self, seq: u64) -> Option<Entry> {
        let e = self.index.remove(seq)?;
        self.counts.moved(e.state, MsgState::Removed);
        Some(e)
    }

    /// The sequence number of the live message with this local id.
    pub fn find_msg_id(&self, msg_id: u64) -> Option<u64> {
        self.index.find_msg_id(msg_id)
    }

    /// Continues numbering after `next_seq` (from the catalog), so sequence
    /// numbers, and with them receipt handles, are never reused.
    pub fn set_next_seq(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq);
        if self.index.is_empty() {
            self.cursor = self.cursor.max(next_seq);
        }
    }

    pub fn min_live_pos(&self) -> Option<u64> {
        self.index.min_live_pos()
    }

    pub fn live_bytes_below(&self, pos: u64) -> u64 {
        self.index.live_bytes_below(pos)
    }

    /// Up to `max` live messages whose bodies lie below `pos`, oldest first.
    pub fn below(&self, pos: u64, max: usize) -> Vec<(u64, Entry)> {
        self.index.below(pos).take(max).map(|(s, e)| (s, *e)).collect()
    }

    /// Runs due timers: delayed and in-flight messages become ready, except
    /// in-flight ones that reached maxReceiveCount or maxTimeToLive (parked
    /// in `dead_letter_due`) and half messages (their checks go to
    /// `checks_due`). Returns whether any message became ready.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let mut any = false;
        let max_receives = if self.attrs.has_dead_letter() { self.attrs.max_receive_count } else { 0 };
        let ttl_ms = self.dead_letter_ttl_ms();
        while let Some((deadline, seq)) = self.timers.pop_due(now_ms) {
            let Some(e) = self.index.get_mut(seq) else {
                continue;
            };
            if e.visible_at_ms != deadline {
                continue;
            }
            match e.state {
                MsgState::Half => {
                    e.visible_at_ms = u64::MAX;
                    self.checks_due.push(seq);
                    continue;
                }
                MsgState::InFlight
                    if (max_receives > 0 && e.dequeue_count >= max_receives)
                        || ttl_ms.is_some_and(|t| e.enqueue_ms + t <= now_ms) =>
                {
                    e.visible_at_ms = u64::MAX;
                    self.dead_letter_due.push(seq);
                    continue;
                }
                MsgState::Delayed | MsgState::InFlight => {}
                _ => continue,
            }
            let old = e.state;
            e.state = MsgState::Ready;
            self.counts.moved(old, MsgState::Ready);
            if seq < self.cursor {
                self.requeued.push(Reverse(seq));
            }
            any = true;
        }
        any
    }

    fn dead_letter_ttl_ms(&self) -> Option<u64> {
        (self.attrs.has_dead_letter() && self.attrs.max_time_to_live > 0)
            .then(|| u64::from(self.attrs.max_time_to_live) * 1000)
    }

    /// Ready and delayed messages unconsumed for maxTimeToLive (oldest first,
    /// at most `max`): parked for the move to the dead-letter queue.
    pub fn collect_ttl_expired(&mut self, now_ms: u64, max: usize) {
        let Some(ttl) = self.dead_letter_ttl_ms() else { return };
        let due: Vec<u64> = self
            .index
            .iter_from(0)
            .take_while(|(_, e)| e.enqueue_ms + ttl <= now_ms)
            .filter(|(_, e)| matches!(e.state, MsgState::Ready | MsgState::Delayed))
            .map(|(s, _)| s)
            .take(max)
            .collect();
        for seq in due {
            if let Some(e) = self.index.get_mut(seq) {
                e.visible_at_ms = u64::MAX;
                let old = e.state;
                e.state = MsgState::InFlight;
                self.counts.moved(old, MsgState::InFlight);
                self.dead_letter_due.push(seq);
            }
        }
    }

    /// A parked message whose move could not be logged goes back to ready.
    pub fn unpark(&mut self, seq: u64) {
        if let Some(e) = self.index.get_mut(seq) {
            if e.visible_at_ms == u64::MAX && e.state == MsgState::InFlight {
                e.state = MsgState::Ready;
                self.counts.moved(MsgState::InFlight, MsgState::Ready);
                self.requeued.push(Reverse(seq));
            }
        }
    }

    /// Records that a half message was checked `count` times; the next check is at `next_ms`.
    pub fn apply_tx_checked(&mut self, seq: u64, count: u32, next_ms: u64) {
        if let Some(e) = self.index.get_mut(seq) {
            if e.state == MsgState::Half {
                e.dequeue_count = count;
                e.visible_at_ms = next_ms;
                self.timers.push(next_ms, seq);
            }
        }
    }

    /// Commits (the message becomes ready) or rolls back (it is removed) a
    /// half message. Returns false if `seq` is not a half message.
    pub fn apply_tx_ended(&mut self, seq: u64, commit: bool, time_ms: u64) -> bool {
        let Some(e) = self.index.get_mut(seq) else { return false };
        if e.state != MsgState::Half {
            return false;
        }
        if commit {
            e.state = MsgState::Ready;
            e.dequeue_count = 0;
            e.visible_at_ms = time_ms;
            self.counts.moved(MsgState::Half, MsgState::Ready);
            if seq < self.cursor {
                self.requeued.push(Reverse(seq));
            }
        } else {
            self.take(seq);
        }
        true
    }

    /// Makes deleted-but-retained messages enqueued at or after `start_ms`
    /// ready again and moves the read position back to the first message
    /// enqueued at or after it, so delivery resumes in enqueue order.
    /// Returns how many deleted messages came back.
    pub fn apply_rewound(&mut self, start_ms: u64) -> u64 {
        let from: Vec<(u64, MsgState)> =
            self.index.iter_from(0).filter(|(_, e)| e.enqueue_ms >= start_ms).map(|(s, e)| (s, e.state)).collect();
        let mut rewound = 0;
        for &(seq, state) in &from {
            if state == MsgState::Deleted {
                if let Some(e) = self.index.get_mut(seq) {
                    e.state = MsgState::Ready;
                    self.counts.moved(MsgState::Deleted, MsgState::Ready);
                    rewound += 1;
                }
            }
        }
        let base = self.index.base();
        if let Some(&(first, _)) = from.first() {
            if first < self.cursor {
                // Ready messages between `first` and the old cursor may also sit
                // in the requeue heap; pick skips the duplicate (state check).
                self.cursor = first.max(base);
            }
        }
        // Overflow entries sit below the cursor's reach: hand them to the heap.
        for &(seq, _) in from.iter().take_while(|(s, _)| *s < base) {
            if self.is_ready(seq) {
                self.requeued.push(Reverse(seq));
            }
        }
        rewound
    }

    /// Removes every message (live or kept for rewind). Returns how many
    /// undeleted messages were dropped.
    pub fn apply_purged(&mut self) -> u64 {
        let dropped = self.counts.backlog();
        let seqs: Vec<u64> = self.index.iter_from(0).map(|(s, _)| s).collect();
        for seq in seqs {
            self.index.remove(seq);
        }
        self.counts = Counts::default();
        self.timers = Timers::default();
        self.requeued.clear();
        self.rewind_expiry.clear();
        self.dead_letter_due.clear();
        self.checks_due.clear();
        self.cursor = self.next_seq;
        self.origins.clear();
        dropped
    }

    /// Remembers a moved-in message's original id.
    pub fn note_origin(&mut self, original_msg_id: u64, seq: u64) {
        self.origins.insert(original_msg_id, seq);
        if self.origins.len() > 2 * self.index.len() + ORIGINS_SLACK {
            let index = &self.index;
            self.origins.retain(|_, s| index.get(*s).is_some());
        }
    }

    /// The sequence number of a live message by its original id (moved-in messages).
    pub fn find_origin_id(&self, original_msg_id: u64) -> Option<u64> {
        self.origins.get(&original_msg_id).copied().filter(|s| self.index.get(*s).is_some())
    }

    /// Up to `max` live messages from `from_seq` on, in sequence order (inspection).
    pub fn peek(&self, from_seq: u64, max: usize) -> Vec<(u64, Entry)> {
        self.index.iter_from(from_seq).take(max).map(|(s, e)| (s, *e)).collect()
    }

    /// Drops messages past msgRetentionSeconds and deleted ones past
    /// rewindSeconds. Returns the ids of undeleted messages that expired.
    pub fn expire_retention(&mut self, now_ms: u64) -> Vec<u64> {
        let retention_ms = u64::from(self.attrs.msg_retention_seconds) * 1000;
        let rewind_ms = u64::from(self.attrs.rewind_seconds) * 1000;
        let mut dropped = Vec::new();
        while let Some((seq, e)) = self.index.first() {
            if e.enqueue_ms + retention_ms > now_ms {
                break;
            }
            let (state, msg_id) = (e.state, e.msg_id);
            self.index.remove(seq);
            self.counts.moved(state, MsgState::Removed);
            if state != MsgState::Deleted {
                dropped.push(msg_id);
            }
        }
        self.expired_total += dropped.len() as u64;
        while let Some(Reverse((enq, seq))) = self.rewind_expiry.peek().copied() {
            if enq + rewind_ms > now_ms {
                break;
            }
            self.rewind_expiry.pop();
            if self.index.get(seq).is_some_and(|e| e.state == MsgState::Deleted && e.enqueue_ms == enq) {
                self.index.remove(seq);
                self.counts.moved(MsgState::Deleted, MsgState::Removed);
            }
        }
        dropped
    }

    /// Chooses up to `max` ready messages, oldest first, without changing
    /// their state: the caller logs a `Received` record and then applies it.
    pub fn pick_ready(&mut self, max: usize, now_ms: u64) -> Vec<u64> {
        self.expire(now_ms);
        self.catch_up_cursor();
        let mut out = Vec::with_capacity(max.min(self.counts.ready as usize));
        while out.len() < max {
            while let Some(Reverse(s)) = self.requeued.peek().copied() {
                if self.is_ready(s) && !out.contains(&s) {
                    break;
                }
                self.requeued.pop();
            }
            let end = self.index.end();
            while self.cursor < end && (!self.is_ready(self.cursor) || out.contains(&self.cursor)) {
                self.cursor += 1;
            }
            let from_heap = self.requeued.peek().map(|r| r.0);
            let from_scan = (self.cursor < end).then_some(self.cursor);
            let pick = match (from_heap, from_scan) {
                (Some(h), Some(c)) if h <= c => {
                    self.requeued.pop();
                    if h == c {
                        self.cursor += 1;
                    }
                    h
                }
                (_, Some(c)) => {
                    self.cursor += 1;
                    c
                }
                (Some(h), None) => {
                    self.requeued.pop();
                    h
                }
                (None, None) => break,
            };
            out.push(pick);
        }
        out
    }

    /// Returns picked messages whose `Received` record could not be logged.
    pub fn unpick(&mut self, seqs: &[u64]) {
        for &s in seqs {
            self.requeued.push(Reverse(s));
        }
    }

    fn is_ready(&self, seq: u64) -> bool {
        self.index.get(seq).is_some_and(|e| e.state == MsgState::Ready)
    }

    /// Keeps the invariant when the index moved stragglers below the cursor's reach.
    fn catch_up_cursor(&mut self) {
        let base = self.index.base();
        if self.cursor < base {
            let behind: Vec<u64> = self
                .index
                .iter_from(self.cursor)
                .take_while(|(s, _)| *s < base)
                .filter(|(_, e)| e.state == MsgState::Ready)
                .map(|(s, _)| s)
                .collect();
            self.requeued.extend(behind.into_iter().map(Reverse));
            self.cursor = base;
        }
    }

    /// Marks messages as delivered at `time_ms`, invisible until `visible_at_ms`.
    /// Messages that are gone (replay of a record whose message later expired) are skipped.
    pub fn apply_received(&mut self, time_ms: u64, visible_at_ms: u64, seqs: &[u64]) {
        for &seq in seqs {
            let Some(e) = self.index.get_mut(seq) else {
                continue;
            };
            if !matches!(e.state, MsgState::Ready | MsgState::Delayed | MsgState::InFlight) {
                continue;
            }
            let old = e.state;
            e.state = MsgState::InFlight;
            e.dequeue_count = e.dequeue_count.saturating_add(1);
            e.set_first_dequeue(time_ms);
            e.visible_at_ms = visible_at_ms;
            self.counts.moved(old, MsgState::InFlight);
            self.timers.push(visible_at_ms, seq);
            self.totals.received += 1;
        }
    }

    /// The message a receipt handle names, if the handle is still valid.
    pub fn check_handle(&self, keys: &ReceiptKeys, handle: ReceiptHandle, now_ms: u64) -> Result<u64, EngineError> {
        let (seq, dequeue_count) = keys.open(self.uid, handle).ok_or_else(EngineError::receipt_invalid)?;
        match self.index.get(seq) {
            Some(e)
                if e.state == MsgState::InFlight
                    && e.dequeue_count == dequeue_count
                    && now_ms < e.visible_at_ms
                    && e.visible_at_ms != u64::MAX =>
            {
                Ok(seq)
            }
            _ => Err(EngineError::receipt_invalid()),
        }
    }

    pub fn apply_deleted(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            let Some(e) = self.index.get_mut(seq) else {
                continue;
            };
            let old = e.state;
            if old == MsgState::Deleted {
                continue;
            }
            self.totals.deleted += 1;
            if self.attrs.rewind_seconds > 0 {
                e.state = MsgState::Deleted;
                let enq = e.enqueue_ms;
                self.rewind_expiry.push(Reverse((enq, seq)));
                self.counts.moved(old, MsgState::Deleted);
            } else {
                self.index.remove(seq);
                self.counts.moved(old, MsgState::Removed);
            }
        }
    }

    /// Moves an in-flight message's lease end. A deadline at or before the
    /// current time makes it ready at the next expiry check.
    pub fn apply_visibility(&mut self, seq: u64, visible_at_ms: u64) {
        if let Some(e) = self.index.get_mut(seq) {
            if e.state == MsgState::InFlight {
                e.visible_at_ms = visible_at_ms;
                self.timers.push(visible_at_ms, seq);
            }
        }
    }

    /// Enqueue time of the oldest message not yet deleted, 0 if none.
    pub fn min_msg_time_ms(&self) -> u64 {
        self.index
            .iter_from(0)
            .find(|(_, e)| matches!(e.state, MsgState::Ready | MsgState::Delayed | MsgState::InFlight | MsgState::Half))
            .map_or(0, |(_, e)| e.enqueue_ms)
    }

    /// Every live message (for checks in tests and for compaction).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        self.index.iter_from(0)
    }
}
