//! Dead-letter moves, the transfers that carry them (and redrives) between
//! queues, and redrive tasks. See `transfers.rs` for the protocol.

use bytes::Bytes;
use cmq_protocol::names::shard_for;
use cmq_protocol::ops::REDRIVE_ID_SHARD_SHIFT;
use cmq_protocol::{ErrorCode, MessageOrigin, RedriveInfo, RedriveState};

use super::ShardEngine;
use crate::engine::error::EngineError;
use crate::engine::message_index::{Entry, MsgState, FLAG_ORIGIN};
use crate::engine::record::{
    transfer_kind, PushGaveUp, Record, RedriveEnded, RedriveStarted, TransferDone, TransferIn, TransferOut,
    TransferReturned, RECORD_IDS_MAX,
};
use crate::engine::record_log::{Durability, Log};
use crate::engine::suffix;
use crate::engine::transfers::{Lane, OutboxEntry, OUTBOX_DUE_PER_TURN_MAX, TRANSFER_RESEND_MS};

/// Why a redrive without `to` leaves a message where it is.
const NO_SOURCE_QUEUE: &str = "it came into the dead-letter queue from no other queue, so it has no source \
                               queue to go back to; redrive it with a destination queue";

/// A transfer the shard must send to the destination queue's shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTransfer {
    pub id: u64,
    pub kind: u8,
    pub dst_shard: u16,
    pub dst_queue: String,
    /// Body, then `suffix_len` bytes of encoded `MessageOrigin`, in this shard's log.
    pub body_pos: u64,
    pub body_len: u32,
    pub suffix_len: u32,
    pub dequeue_count: u32,
}

/// A transfer as the destination receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InTransfer {
    pub src_shard: u16,
    pub id: u64,
    pub kind: u8,
    pub dst_queue: String,
    pub body: Bytes,
    /// Encoded `MessageOrigin`.
    pub origin: Bytes,
    pub dequeue_count: u32,
    /// The source has nothing pending below this id.
    pub low_watermark: u64,
}

impl ShardEngine {
    // ---- moving messages out ------------------------------------------------

    /// Moves a queue's parked messages (maxReceiveCount or maxTimeToLive
    /// reached) to its dead-letter queue.
    pub(super) fn dead_letter_parked(&mut self, log: &mut impl Log, now_ms: u64, uid: u32) {
        let Some(q) = self.queues.get_mut(&uid) else { return };
        let due = std::mem::take(&mut q.dead_letter_due);
        let dlq = q.attrs.dead_letter_queue.clone();
        let name = q.name.clone();
        for seq in due {
            if dlq.is_empty() || dlq == name {
                if let Some(q) = self.queues.get_mut(&uid) {
                    q.unpark(seq);
                }
                continue;
            }
            match self.transfer_out(log, now_ms, uid, seq, transfer_kind::DEAD_LETTER, 0, &dlq) {
                Ok(_) => {
                    if let Some(q) = self.queues.get_mut(&uid) {
                        q.totals.dead_lettered += 1;
                    }
                }
                Err(e) => {
                    log::warn!("queue {name:?}: cannot dead-letter a message: {}", e.message);
                    if let Some(q) = self.queues.get_mut(&uid) {
                        q.unpark(seq);
                    }
                }
            }
        }
        self.note_ready(uid);
    }

    /// Logs a `TransferOut` for message `seq` of queue `uid` and applies it:
    /// the message leaves its queue for the outbox. The record is synced:
    /// the transfer is sent only once the move cannot be undone by a crash.
    #[allow(clippy::too_many_arguments)]
    fn transfer_out(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        uid: u32,
        seq: u64,
        kind: u8,
        redrive: u64,
        dst_queue: &str,
    ) -> Result<(), EngineError> {
        let q = self.queues.get(&uid).ok_or_else(|| EngineError::queue_not_found("?"))?;
        let e: Entry = *q.entry(seq).ok_or_else(|| EngineError::new(ErrorCode::INTERNAL, "message vanished"))?;
        let origin = match suffix::read_origin(log, &e)? {
            Some(o) => o,
            None => MessageOrigin {
                source_queue: q.name.clone(),
                original_msg_id: e.msg_id,
                first_enqueue_time_ms: e.enqueue_ms,
            },
        };
        let body = Bytes::copy_from_slice(log.read(e.body_pos, e.body_len)?);
        let origin = suffix::encode_origin(&origin);
        let id = self.exchange.outbox.next_id;
        let rec = TransferOut {
            id,
            kind,
            redrive,
            src_uid: uid,
            src_seq: seq,
            dequeue_count: e.dequeue_count,
            time_ms: now_ms,
            dst_queue: dst_queue.to_owned(),
            body,
            suffix: origin.clone(),
        };
        let (pos, offset) = self.log_record(log, &rec, Durability::Synced)?;
        let out = OutboxEntry {
            kind,
            redrive,
            src_uid: uid,
            dst_queue: dst_queue.to_owned(),
            body_pos: pos + u64::from(offset),
            body_len: e.body_len,
            suffix_len: origin.len() as u32,
            dequeue_count: e.dequeue_count,
            next_send_ms: now_ms,
            attempts: 0,
            publish: None,
            created_ms: now_ms,
        };
        let original = suffix::origin_msg_id(&origin);
        self.apply_transfer_out(&rec, out, original, true);
        Ok(())
    }

    /// Transfers due for (re)sending now (moves between queues, and
    /// published messages for queue subscriptions), at most
    /// `OUTBOX_DUE_PER_TURN_MAX` (and its byte bound): the rest stay due
    /// for the next turn.
    pub fn transfers_to_send(&mut self, now_ms: u64) -> Vec<OutTransfer> {
        let shards = self.cfg.shard_count;
        self.exchange
            .outbox
            .take_due(now_ms, Lane::Transfer, OUTBOX_DUE_PER_TURN_MAX, TRANSFER_RESEND_MS)
            .into_iter()
            .map(|(id, e)| OutTransfer {
                id,
                kind: e.kind,
                dst_shard: shard_for(&e.dst_queue, shards),
                dst_queue: e.dst_queue,
                body_pos: e.body_pos,
                body_len: e.body_len,
                suffix_len: e.suffix_len,
                dequeue_count: e.dequeue_count,
            })
            .collect()
    }

    /// The lowest transfer id this shard still has pending.
    pub fn transfer_low_watermark(&self) -> u64 {
        self.exchange.outbox.low_watermark()
    }

    /// Destinations' answers to our transfers. Ok: done. QUEUE_NOT_FOUND:
    /// the message goes back where it came from. Anything else: try later.
    pub fn transfer_results(&mut self, log: &mut impl Log, now_ms: u64, results: &[(u64, Result<(), ErrorCode>)]) {
        let mut done = Vec::new();
        for (id, result) in results {
            match result {
                Ok(()) if self.exchange.outbox.contains(*id) => done.push(*id),
                Ok(()) => {}
                Err(code) if *code == ErrorCode::QUEUE_NOT_FOUND => self.transfer_return(log, now_ms, *id),
                Err(_) => self.exchange.outbox.retry_later(*id, now_ms),
            }
        }
        // Losing this record only means sending again; the destination filters duplicates.
        self.log_transfers_done(log, &done);
    }

    /// Logs and applies `TransferDone` for `ids`, in records of at most
    /// `RECORD_IDS_MAX` ids (a turn may confirm any number of transfers).
    pub(super) fn log_transfers_done(&mut self, log: &mut impl Log, ids: &[u64]) {
        for chunk in ids.chunks(RECORD_IDS_MAX) {
            match self.log_record(log, &Record::TransferDone(TransferDone { ids: chunk.to_vec() }), Durability::Written)
            {
                Ok(_) => self.apply_transfer_done(chunk),
                Err(e) => {
                    log::warn!("cannot log finished transfers: {}", e.message);
                    return;
                }
            }
        }
    }

    fn transfer_return(&mut self, log: &mut impl Log, now_ms: u64, id: u64) {
        let Some(out) = self.exchange.outbox.get(id) else { return };
        if out.kind == transfer_kind::PUBLISH {
            // A queue subscription whose queue is gone: the delivery is dropped.
            log::warn!("queue {:?} of a subscription does not exist: delivery {id} dropped", out.dst_queue);
            let rec = Record::PushGaveUp(PushGaveUp { id, time_ms: now_ms });
            if self.log_record(log, &rec, Durability::Written).is_ok() {
                if let Some(e) = self.exchange.outbox.remove(id) {
                    self.topic_delivery_done(&e, false);
                }
            }
            return;
        }
        let uid = out.src_uid;
        let Some(q) = self.queues.get(&uid) else {
            // The queue it came from is gone too: nothing can take it.
            log::warn!("dropping a message whose destination {:?} and source queue are both gone", out.dst_queue);
            if self.log_record(log, &Record::TransferDone(TransferDone { ids: vec![id] }), Durability::Written).is_ok()
            {
                self.apply_transfer_done(&[id]);
            }
            return;
        };
        log::warn!("queue {:?} does not exist: message returned to {:?}", out.dst_queue, q.name);
        let seq = q.next_seq();
        let durability = Self::data_durability(q.attrs.flush_policy);
        let msg_id = self.alloc_msg_ids(1);
        let rec = Record::TransferReturned(TransferReturned { id, uid, seq, msg_id, enqueue_ms: now_ms });
        if self.log_record(log, &rec, durability).is_ok() {
            self.apply_transfer_returned(id, uid, seq, msg_id, now_ms, true);
        }
    }

    /// The destination side: applies a transfer unless it already has.
    pub fn accept_transfer(&mut self, log: &mut impl Log, now_ms: u64, t: &InTransfer) -> Result<(), EngineError> {
        self.exchange.inbound.prune(t.src_shard, t.low_watermark);
        if self.exchange.inbound.contains(t.src_shard, t.id) {
            return Ok(());
        }
        let uid = self.lookup(&t.dst_queue)?;
        let q = &self.queues[&uid];
        if q.counts().backlog() >= q.attrs.max_msg_heap_num {
            return Err(EngineError::new(ErrorCode::QUEUE_FULL, format!("queue {:?} is full", t.dst_queue)));
        }
        let seq = q.next_seq();
        let durability = Self::data_durability(q.attrs.flush_policy);
        let msg_id = self.alloc_msg_ids(1);
        // A redriven message starts over; a dead-lettered one keeps its count.
        let dequeue_count = if t.kind == transfer_kind::REDRIVE { 0 } else { t.dequeue_count };
        let rec = TransferIn {
            src_shard: t.src_shard,
            id: t.id,
            uid,
            seq,
            msg_id,
            enqueue_ms: now_ms,
            dequeue_count,
            body: t.body.clone(),
            suffix: t.origin.clone(),
        };
        let (pos, offset) = self.log_record(log, &rec, durability)?;
        let entry = Entry {
            msg_id,
            body_pos: pos + u64::from(offset),
            enqueue_ms: now_ms,
            visible_at_ms: now_ms,
            body_len: t.body.len() as u32,
            first_dequeue_rel: 0,
            dequeue_count,
            state: MsgState::Ready,
            // Topic deliveries are new messages; moved ones keep their origin.
            flags: if t.origin.is_empty() { 0 } else { FLAG_ORIGIN },
        };
        self.apply_transfer_in(&rec, entry, suffix::origin_msg_id(&t.origin), pos);
        Ok(())
    }

    /// The source shard has nothing pending below `below`.
    pub fn prune_inbound(&mut self, src_shard: u16, below: u64) {
        self.exchange.inbound.prune(src_shard, below);
    }

    pub(super) fn alloc_msg_ids(&mut self, n: u64) -> u64 {
        let id = (u64::from(self.cfg.shard) << super::MSG_ID_SHARD_SHIFT) | self.counters.next_msg_counter;
        self.counters.next_msg_counter += n;
        id
    }

    /// Names of this shard's queues whose dead-letter queue is `name`.
    pub fn dead_letter_sources(&self, name: &str) -> Vec<String> {
        self.queues.values().filter(|q| q.attrs.dead_letter_queue == name).map(|q| q.name.clone()).collect()
    }

    pub fn queue_exists(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    // ---- redrive ------------------------------------------------------------

    /// Starts moving the messages now in dead-letter queue `dlq` back to their
    /// source queues (or to `to`), at most `rate` per second (0 = unlimited).
    pub fn start_redrive(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        dlq: &str,
        to: &str,
        rate: u32,
    ) -> Result<RedriveInfo, EngineError> {
        if !to.is_empty() {
            cmq_protocol::names::validate_name("to", to).map_err(EngineError::invalid)?;
        }
        let uid = self.lookup(dlq)?;
        let q = &self.queues[&uid];
        let end_seq = q.next_seq();
        let total = q.counts().backlog();
        let id = (u64::from(self.cfg.shard) << REDRIVE_ID_SHARD_SHIFT) | self.counters.next_redrive;
        let rec = RedriveStarted { id, uid, rate, end_seq, total, time_ms: now_ms, to: to.to_owned() };
        self.log_record(log, &rec, Durability::Synced)?;
        self.apply_redrive_started(rec);
        self.redrive_info(id)
    }

    pub fn cancel_redrive(&mut self, log: &mut impl Log, now_ms: u64, id: u64) -> Result<RedriveInfo, EngineError> {
        let r = self.redrives.get(&id).ok_or_else(|| redrive_not_found(id))?;
        if r.state == RedriveState::Running {
            let rec = Record::RedriveEnded(RedriveEnded { id, state: 3, time_ms: now_ms });
            self.log_record(log, &rec, Durability::Synced)?;
            self.apply_redrive_ended(id, 3, now_ms);
        }
        self.redrive_info(id)
    }

    pub fn list_redrives(&self) -> Vec<RedriveInfo> {
        self.redrives.keys().filter_map(|id| self.redrive_info(*id).ok()).collect()
    }

    fn redrive_info(&self, id: u64) -> Result<RedriveInfo, EngineError> {
        let r = self.redrives.get(&id).ok_or_else(|| redrive_not_found(id))?;
        let (name, remaining) = match self.queues.get(&r.uid) {
            Some(q) if r.state == RedriveState::Running => (
                q.name.clone(),
                q.iter()
                    .take_while(|(s, _)| *s < r.end_seq)
                    .filter(|(_, e)| matches!(e.state, MsgState::Ready | MsgState::InFlight | MsgState::Delayed))
                    .count() as u64,
            ),
            Some(q) => (q.name.clone(), 0),
            None => (String::new(), 0),
        };
        Ok(r.info(&name, remaining))
    }

    /// One step of every running redrive, within its rate budget.
    pub(super) fn run_redrives(&mut self, log: &mut impl Log, now_ms: u64) {
        let ids: Vec<u64> = self.redrives.values().filter(|r| r.state == RedriveState::Running).map(|r| r.id).collect();
        for id in ids {
            self.redrive_step(log, now_ms, id);
        }
    }

    fn redrive_step(&mut self, log: &mut impl Log, now_ms: u64, id: u64) {
        let Some(r) = self.redrives.get_mut(&id) else { return };
        if r.next_scan_ms > now_ms {
            return;
        }
        let (uid, end_seq, to) = (r.uid, r.end_seq, r.to.clone());
        let mut budget = r.budget(now_ms);
        if budget == 0 {
            return;
        }
        let Some(q) = self.queues.get(&uid) else {
            self.finish_redrive(log, now_ms, id, 3);
            return;
        };
        let cursor = r.cursor;
        let candidates: Vec<(u64, Entry)> = q
            .peek(cursor, usize::MAX)
            .into_iter()
            .take_while(|(s, _)| *s < end_seq)
            .filter(|(s, e)| e.state == MsgState::Ready && !r.skipped.contains(s))
            .take(budget as usize)
            .collect();
        let mut last = cursor;
        for (seq, e) in &candidates {
            last = seq + 1;
            let dst = if to.is_empty() {
                match suffix::read_origin(log, e) {
                    Ok(Some(o)) => o.source_queue,
                    _ => {
                        // Nowhere to send it: it stays; count it once.
                        if let Some(r) = self.redrives.get_mut(&id) {
                            if r.skipped.insert(*seq) {
                                r.failed += 1;
                                r.failure = NO_SOURCE_QUEUE.to_owned();
                            }
                        }
                        continue;
                    }
                }
            } else {
                to.clone()
            };
            if let Err(e) = self.transfer_out(log, now_ms, uid, *seq, transfer_kind::REDRIVE, id, &dst) {
                log::warn!("redrive {id}: {}", e.message);
                break;
            }
            budget -= 1;
        }
        let Some(r) = self.redrives.get_mut(&id) else { return };
        r.spend(candidates.len() as u32);
        r.cursor = last.max(r.cursor);
        if candidates.is_empty() || r.cursor >= end_seq {
            // A pass is over: done if nothing in scope is left (in-flight
            // messages come back when their leases end: look again later).
            let left = self.queues.get(&uid).map_or(0, |q| {
                q.iter()
                    .take_while(|(s, _)| *s < end_seq)
                    .filter(|(_, e)| matches!(e.state, MsgState::Ready | MsgState::InFlight | MsgState::Delayed))
                    .count() as u64
            });
            // Done only once every move is confirmed: a refused one comes back.
            let unconfirmed = self.exchange.outbox.has_redrive(id);
            let Some(r) = self.redrives.get_mut(&id) else { return };
            if left <= r.skipped.len() as u64 && !unconfirmed {
                self.finish_redrive(log, now_ms, id, 2);
            } else {
                r.cursor = 0;
                r.next_scan_ms = now_ms + crate::engine::redrive::REDRIVE_RESCAN_MS;
            }
        }
        let _ = budget;
    }

    fn finish_redrive(&mut self, log: &mut impl Log, now_ms: u64, id: u64, state: u8) {
        let rec = Record::RedriveEnded(RedriveEnded { id, state, time_ms: now_ms });
        if self.log_record(log, &rec, Durability::Synced).is_ok() {
            self.apply_redrive_ended(id, state, now_ms);
        }
    }
}

fn redrive_not_found(id: u64) -> EngineError {
    EngineError::new(ErrorCode::REDRIVE_NOT_FOUND, format!("no redrive task {id}"))
}
