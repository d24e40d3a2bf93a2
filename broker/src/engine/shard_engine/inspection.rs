//! Rewind, purge, and looking at messages without consuming them.

use bytes::Bytes;
use cmq_protocol::limits::{FRAME_BYTES_MAX, PEEK_MSGS_MAX};
use cmq_protocol::{MessageState, MessageStatus, PeekMessagesOk, PeekedMessage};

use super::ShardEngine;
use crate::engine::error::EngineError;
use crate::engine::message_index::{Entry, MsgState};
use crate::engine::record::{Purged, Record, Rewound};
use crate::engine::record_log::{Durability, Log};
use crate::engine::suffix;

/// Body bytes one peek page may carry (the rest of the frame is headers).
const PEEK_BODY_BYTES_MAX: usize = FRAME_BYTES_MAX as usize / 2;

fn state_of(e: &Entry) -> MessageState {
    match e.state {
        MsgState::Ready => MessageState::Ready,
        MsgState::Delayed => MessageState::Delayed,
        MsgState::InFlight => MessageState::InFlight,
        MsgState::Deleted => MessageState::Deleted,
        MsgState::Half => MessageState::Half,
        MsgState::Removed => MessageState::Gone,
    }
}

/// QueryMessage's detail for an id the queue cannot account for.
pub const GONE_DETAIL: &str = "not in this queue: deleted and no longer retained, or never sent to it";

impl ShardEngine {
    /// Makes messages enqueued at or after `start_ms` receivable again
    /// (deleted ones still within rewindSeconds included). Returns how many
    /// deleted messages came back.
    pub fn rewind(&mut self, log: &mut impl Log, now_ms: u64, name: &str, start_ms: u64) -> Result<u64, EngineError> {
        let uid = self.lookup(name)?;
        let q = &self.queues[&uid];
        let window_ms = u64::from(q.attrs.rewind_seconds) * 1000;
        if window_ms == 0 {
            return Err(EngineError::invalid(format!(
                "startConsumeTime: queue {name:?} has rewindSeconds 0 (rewind disabled)"
            )));
        }
        if start_ms > now_ms {
            return Err(EngineError::invalid("startConsumeTime: is in the future"));
        }
        if start_ms + window_ms < now_ms {
            return Err(EngineError::invalid(format!(
                "startConsumeTime: {} s ago is outside the queue's rewindSeconds {}",
                (now_ms - start_ms) / 1000,
                q.attrs.rewind_seconds
            )));
        }
        let durability = Self::data_durability(q.attrs.flush_policy);
        let before = q.counts().deleted;
        self.log_record(log, &Record::Rewound(Rewound { uid, time_ms: now_ms, start_ms }), durability)?;
        self.apply_rewound(uid, start_ms);
        Ok(before - self.queues[&uid].counts().deleted)
    }

    /// Drops every message of the queue. Returns how many undeleted messages went.
    pub fn purge(&mut self, log: &mut impl Log, now_ms: u64, name: &str) -> Result<u64, EngineError> {
        let uid = self.lookup(name)?;
        self.log_record(log, &Record::Purged(Purged { uid, time_ms: now_ms }), Durability::Synced)?;
        Ok(self.apply_purged(uid, now_ms))
    }

    /// A page of messages after `cursor` (0 = from the start), changing nothing.
    pub fn peek(
        &self,
        log: &impl Log,
        name: &str,
        cursor: u64,
        max: u16,
        include_body: bool,
    ) -> Result<PeekMessagesOk, EngineError> {
        if max == 0 || usize::from(max) > PEEK_MSGS_MAX {
            return Err(EngineError::invalid(format!("max: must be 1-{PEEK_MSGS_MAX}, got {max}")));
        }
        let uid = self.lookup(name)?;
        let q = &self.queues[&uid];
        let page = q.peek(cursor, usize::from(max) + 1);
        let more = page.len() > usize::from(max);
        let mut messages = Vec::with_capacity(page.len().min(usize::from(max)));
        let mut body_bytes = 0usize;
        let mut next_cursor = 0;
        for (seq, e) in page.into_iter().take(usize::from(max)) {
            if include_body && body_bytes + e.body_len as usize > PEEK_BODY_BYTES_MAX && !messages.is_empty() {
                next_cursor = seq;
                break;
            }
            let body = if include_body {
                body_bytes += e.body_len as usize;
                Bytes::copy_from_slice(log.read(e.body_pos, e.body_len)?)
            } else {
                Bytes::new()
            };
            let origin = suffix::read_origin(log, &e)?;
            messages.push(PeekedMessage {
                msg_id: origin.as_ref().map_or(e.msg_id, |o| o.original_msg_id),
                state: state_of(&e),
                enqueue_time_ms: e.enqueue_ms,
                first_dequeue_time_ms: e.first_dequeue_ms(),
                dequeue_count: if e.state == MsgState::Half { 0 } else { e.dequeue_count },
                next_visible_time_ms: match e.state {
                    MsgState::Delayed | MsgState::InFlight | MsgState::Half if e.visible_at_ms != u64::MAX => {
                        e.visible_at_ms
                    }
                    _ => 0,
                },
                body_len: e.body_len,
                body,
                origin,
            });
            next_cursor = if more { seq + 1 } else { 0 };
        }
        Ok(PeekMessagesOk { messages, next_cursor })
    }

    /// The state of a message by id: live ones from the index, moved ones by
    /// their original id, recent removals from the fates record.
    pub fn query_message(&self, log: &impl Log, name: &str, msg_id: u64) -> Result<MessageStatus, EngineError> {
        let uid = self.lookup(name)?;
        let q = &self.queues[&uid];
        if let Some(seq) = q.find_msg_id(msg_id).or_else(|| q.find_origin_id(msg_id)) {
            if let Some(e) = q.entry(seq) {
                let origin = suffix::read_origin(log, e)?;
                return Ok(MessageStatus {
                    msg_id,
                    state: state_of(e),
                    enqueue_time_ms: e.enqueue_ms,
                    first_dequeue_time_ms: e.first_dequeue_ms(),
                    dequeue_count: if e.state == MsgState::Half { 0 } else { e.dequeue_count },
                    next_visible_time_ms: if e.visible_at_ms == u64::MAX { 0 } else { e.visible_at_ms },
                    state_time_ms: 0,
                    detail: String::new(),
                    origin,
                });
            }
        }
        let gone = |state, time, detail: String| MessageStatus {
            msg_id,
            state,
            state_time_ms: time,
            detail,
            ..Default::default()
        };
        if let Some(f) = self.fates.get(msg_id).filter(|f| f.uid == uid) {
            let detail = match f.state {
                MessageState::DeadLettered => format!("moved to dead-letter queue {:?}", q.attrs.dead_letter_queue),
                _ => String::new(),
            };
            return Ok(gone(f.state, f.time_ms, detail));
        }
        let counter = msg_id & ((1 << super::MSG_ID_SHARD_SHIFT) - 1);
        let ours = msg_id >> super::MSG_ID_SHARD_SHIFT == u64::from(self.cfg.shard);
        if let Some((time, below)) = q.purged {
            if ours && counter < below {
                return Ok(gone(MessageState::Purged, time, "purged (or removed before the purge)".into()));
            }
        }
        // Whether the id is another queue's (on this shard or another) or
        // was never issued, the answer has one shape: a queue can no more
        // tell those apart from a delete it no longer remembers than a
        // client should learn other queues' ids from it.
        Ok(gone(MessageState::Gone, 0, GONE_DETAIL.into()))
    }
}
