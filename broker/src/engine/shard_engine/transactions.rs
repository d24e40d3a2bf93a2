//! Transaction (half) messages: stored invisible, then committed or rolled
//! back; unresolved ones are checked with the producer, then the queue's
//! default applies.

use bytes::Bytes;
use cmq_protocol::limits::MSG_BYTES_MAX;
use cmq_protocol::names::validate_name;
use cmq_protocol::{ErrorCode, TxDefault};

use super::ShardEngine;
use crate::engine::error::EngineError;
use crate::engine::message_index::MsgState;
use crate::engine::record::{HalfEnqueued, Record, TxChecked, TxEnded};
use crate::engine::record_log::{Durability, Log};
use crate::engine::suffix;

/// A check the shard pushes to a checker of `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDue {
    pub queue: String,
    pub msg_id: u64,
    pub group: String,
    pub count: u32,
    pub enqueue_ms: u64,
    pub body_pos: u64,
    pub body_len: u32,
}

impl ShardEngine {
    /// Stores a half message; returns its id (the handle EndTransaction takes).
    pub fn send_half(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        group: &str,
        body: &Bytes,
    ) -> Result<u64, EngineError> {
        validate_name("producerGroup", group).map_err(EngineError::invalid)?;
        if body.len() > MSG_BYTES_MAX as usize {
            return Err(EngineError::new(ErrorCode::MESSAGE_TOO_LARGE, "msgBody: larger than 1 MiB"));
        }
        let uid = self.lookup(name)?;
        let q = &self.queues[&uid];
        q.check_send(std::slice::from_ref(body), 0)?;
        let seq = q.next_seq();
        let check_at_ms = now_ms + u64::from(q.attrs.first_query_interval) * 1000;
        let durability = Self::data_durability(q.attrs.flush_policy);
        let msg_id = self.alloc_msg_ids(1);
        let rec = HalfEnqueued {
            uid,
            seq,
            msg_id,
            enqueue_ms: now_ms,
            check_at_ms,
            body: body.clone(),
            suffix: suffix::encode_group(group),
        };
        let (pos, offset) = self.log_record(log, &rec, durability)?;
        self.apply_half_enqueued(&rec, pos + u64::from(offset), body.len() as u32);
        Ok(msg_id)
    }

    /// Commits (visible from now) or rolls back (discarded) a half message.
    pub fn end_transaction(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        msg_id: u64,
        commit: bool,
    ) -> Result<(), EngineError> {
        let uid = self.lookup(name)?;
        let q = &self.queues[&uid];
        let seq = q.find_msg_id(msg_id).filter(|s| q.entry(*s).is_some_and(|e| e.state == MsgState::Half)).ok_or_else(
            || {
                EngineError::new(
                    ErrorCode::MESSAGE_NOT_FOUND,
                    format!("no pending transaction message {msg_id} in queue {name:?} (already resolved?)"),
                )
            },
        )?;
        let durability = Self::data_durability(q.attrs.flush_policy);
        self.log_record(log, &Record::TxEnded(TxEnded { uid, seq, commit, time_ms: now_ms }), durability)?;
        self.apply_tx_ended(uid, seq, commit, now_ms);
        Ok(())
    }

    /// Half messages whose check time came: ask again, or, after
    /// maxQueryCount checks, apply the queue's default.
    pub(super) fn run_checks(&mut self, log: &mut impl Log, now_ms: u64, uid: u32) {
        let Some(q) = self.queues.get_mut(&uid) else { return };
        let due = std::mem::take(&mut q.checks_due);
        let (interval_ms, max, default, name) = (
            u64::from(q.attrs.first_query_interval) * 1000,
            q.attrs.max_query_count,
            q.attrs.transaction_default,
            q.name.clone(),
        );
        let durability = Self::data_durability(q.attrs.flush_policy);
        for seq in due {
            let Some(e) = self.queues.get(&uid).and_then(|q| q.entry(seq)).copied() else { continue };
            if e.state != MsgState::Half {
                continue;
            }
            let count = e.dequeue_count + 1;
            if count > max {
                let commit = default == TxDefault::Commit;
                log::info!(
                    "queue {name:?}: transaction message {} unresolved after {max} checks: {}",
                    e.msg_id,
                    default.as_str()
                );
                if self
                    .log_record(log, &Record::TxEnded(TxEnded { uid, seq, commit, time_ms: now_ms }), durability)
                    .is_ok()
                {
                    self.apply_tx_ended(uid, seq, commit, now_ms);
                    continue;
                }
            } else {
                let next_ms = now_ms + interval_ms;
                // Losing this only means one more check after a crash.
                let rec = Record::TxChecked(TxChecked { uid, seq, count, next_ms });
                if self.log_record(log, &rec, Durability::Written).is_ok() {
                    if let Some(q) = self.queues.get_mut(&uid) {
                        q.apply_tx_checked(seq, count, next_ms);
                    }
                    match suffix::read_group(log, &e) {
                        Ok(group) => self.schedule.checks.push(CheckDue {
                            queue: name.clone(),
                            msg_id: e.msg_id,
                            group,
                            count,
                            enqueue_ms: e.enqueue_ms,
                            body_pos: e.body_pos,
                            body_len: e.body_len,
                        }),
                        Err(err) => log::warn!("cannot read producer group: {}", err.message),
                    }
                    continue;
                }
            }
            // Could not log: try again in a second.
            if let Some(q) = self.queues.get_mut(&uid) {
                q.apply_tx_checked(seq, e.dequeue_count, now_ms + 1000);
            }
        }
        self.register_wakeup(uid);
    }

    /// Checks to push to checkers, produced by the last ticks.
    pub fn take_checks(&mut self) -> Vec<CheckDue> {
        std::mem::take(&mut self.schedule.checks)
    }
}
