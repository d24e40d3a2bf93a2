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
use std::collections::{BinaryHeap, VecDeque};

use bytes::Bytes;
use cmq_protocol::{ErrorCode, QueueAttributes, ReceiptHandle};

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
}

impl Counts {
    /// Messages that count against maxMsgHeapNum.
    pub fn backlog(&self) -> u64 {
        self.ready + self.delayed + self.in_flight
    }

    fn slot(&mut self, s: MsgState) -> Option<&mut u64> {
        match s {
            MsgState::Ready => Some(&mut self.ready),
            MsgState::Delayed => Some(&mut self.delayed),
            MsgState::InFlight => Some(&mut self.in_flight),
            MsgState::Deleted => Some(&mut self.deleted),
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

pub struct Queue {
    pub uid: u32,
    pub name: String,
    pub attrs: QueueAttributes,
    pub created_ms: u64,
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
}

impl Queue {
    pub fn new(uid: u32, name: String, attrs: QueueAttributes, now_ms: u64) -> Queue {
        Queue {
            uid,
            name,
            attrs,
            created_ms: now_ms,
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
        let delayed = visible_at_ms > enqueue_ms;
        for (i, (pos, len)) in bodies.enumerate() {
            let seq = first_seq + i as u64;
            let state = if delayed { MsgState::Delayed } else { MsgState::Ready };
            let entry = Entry {
                msg_id: first_msg_id + i as u64,
                body_pos: pos,
                enqueue_ms,
                visible_at_ms,
                body_len: len,
                first_dequeue_rel: 0,
                dequeue_count: 0,
                state,
            };
            if let Some(old) = self.index.get(seq) {
                self.counts.moved(old.state, MsgState::Removed);
            }
            self.index.insert(seq, entry);
            self.counts.moved(MsgState::Removed, state);
            if delayed {
                self.timers.push(visible_at_ms, seq);
            } else if seq < self.cursor {
                self.requeued.push(Reverse(seq));
            }
            self.next_seq = self.next_seq.max(seq + 1);
        }
    }

    /// Installs a message with its complete state (compaction's `Relocated`
    /// record), replacing whatever is at `seq`.
    pub fn apply_relocated(&mut self, seq: u64, entry: Entry) {
        if let Some(old) = self.index.get(seq) {
            self.counts.moved(old.state, MsgState::Removed);
        }
        self.index.insert(seq, entry);
        self.counts.moved(MsgState::Removed, entry.state);
        match entry.state {
            MsgState::Delayed | MsgState::InFlight => self.timers.push(entry.visible_at_ms, seq),
            MsgState::Ready if seq < self.cursor => self.requeued.push(Reverse(seq)),
            MsgState::Deleted => self.rewind_expiry.push(Reverse((entry.enqueue_ms, seq))),
            _ => {}
        }
        self.next_seq = self.next_seq.max(seq + 1);
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

    /// Makes due delayed and in-flight messages ready. Returns whether any did.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let mut any = false;
        while let Some((deadline, seq)) = self.timers.pop_due(now_ms) {
            let Some(e) = self.index.get_mut(seq) else {
                continue;
            };
            if e.visible_at_ms != deadline || !matches!(e.state, MsgState::Delayed | MsgState::InFlight) {
                continue;
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

    /// Drops messages past msgRetentionSeconds and deleted ones past
    /// rewindSeconds. Returns how many messages left the queue.
    pub fn expire_retention(&mut self, now_ms: u64) -> u64 {
        let retention_ms = u64::from(self.attrs.msg_retention_seconds) * 1000;
        let rewind_ms = u64::from(self.attrs.rewind_seconds) * 1000;
        let mut dropped = 0;
        while let Some((seq, e)) = self.index.first() {
            if e.enqueue_ms + retention_ms > now_ms {
                break;
            }
            let state = e.state;
            self.index.remove(seq);
            self.counts.moved(state, MsgState::Removed);
            dropped += 1;
        }
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
        }
    }

    /// The message a receipt handle names, if the handle is still valid.
    pub fn check_handle(&self, keys: &ReceiptKeys, handle: ReceiptHandle, now_ms: u64) -> Result<u64, EngineError> {
        let (seq, dequeue_count) = keys.open(self.uid, handle).ok_or_else(EngineError::receipt_invalid)?;
        match self.index.get(seq) {
            Some(e)
                if e.state == MsgState::InFlight && e.dequeue_count == dequeue_count && now_ms < e.visible_at_ms =>
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
            .find(|(_, e)| matches!(e.state, MsgState::Ready | MsgState::Delayed | MsgState::InFlight))
            .map_or(0, |(_, e)| e.enqueue_ms)
    }

    /// Every live message (for checks in tests and for compaction).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        self.index.iter_from(0)
    }
}
