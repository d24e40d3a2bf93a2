//! Messages (`protocol/src/messages.rs`): send, receive (and long polls),
//! delete, change visibility.

use cmq_protocol::*;

use super::Handled;
use crate::engine::{EngineError, ReceiveOutcome};
use crate::shard::mailbox::ReplyTo;
use crate::shard::reply::ReplyDep;
use crate::shard::waits::tag;
use crate::shard::Shard;

impl Shard {
    pub(in crate::shard) fn send_message(&mut self, now: u64, r: &SendMessage) -> Handled {
        let (body, key) = (std::slice::from_ref(&r.body), std::slice::from_ref(&r.idempotency_key));
        self.logging(|s| {
            s.engine
                .send_keyed(&mut s.log, now, &r.queue, r.delay_seconds, body, key)
                .map(|ids| Response::SendMessage(SendMessageOk { msg_id: ids[0] }))
        })
    }

    pub(in crate::shard) fn batch_send_message(&mut self, now: u64, r: &BatchSendMessage) -> Handled {
        self.logging(|s| {
            s.engine
                .send_keyed(&mut s.log, now, &r.queue, r.delay_seconds, &r.bodies, &r.idempotency_keys)
                .map(|msg_ids| Response::BatchSendMessage(BatchSendMessageOk { msg_ids }))
        })
    }

    /// A receive (`batch`: BatchReceiveMessage) of up to `max` messages, or
    /// a long poll of request `id` of `to` waiting for them.
    pub(in crate::shard) fn receive(&mut self, to: ReplyTo, id: u64, batch: bool, r: Receive<'_>, now: u64) -> Handled {
        let tag = tag(to, id, batch);
        match self.engine.receive_for(&mut self.log, now, r.queue, r.max, r.polling_wait_seconds, tag) {
            Ok(ReceiveOutcome::Delivered(items)) => Handled::Deliveries { batch, items },
            Ok(ReceiveOutcome::Empty) => {
                Handled::Reply(Err(EngineError::new(ErrorCode::NO_MESSAGE, "no message")), ReplyDep::Logged(0))
            }
            Ok(ReceiveOutcome::Waiting(_)) => Handled::Parked,
            Err(e) => Handled::Reply(Err(e), ReplyDep::Read),
        }
    }

    pub(in crate::shard) fn delete_message(&mut self, now: u64, r: &DeleteMessage) -> Handled {
        self.logging(|s| {
            s.engine.delete(&mut s.log, now, &r.queue, &[r.receipt_handle]).and_then(|mut results| {
                match results.pop() {
                    Some(Err(err)) => Err(err),
                    _ => Ok(Response::DeleteMessage(Empty {})),
                }
            })
        })
    }

    pub(in crate::shard) fn batch_delete_message(&mut self, now: u64, r: &BatchDeleteMessage) -> Handled {
        self.logging(|s| {
            s.engine.delete(&mut s.log, now, &r.queue, &r.receipt_handles).map(|results| {
                let results = results
                    .into_iter()
                    .map(|r| match r {
                        Ok(()) => ItemResult { code: 0, message: String::new() },
                        Err(e) => ItemResult { code: e.code.0, message: e.message },
                    })
                    .collect();
                Response::BatchDeleteMessage(BatchDeleteMessageOk { results })
            })
        })
    }

    pub(in crate::shard) fn change_message_visibility(&mut self, now: u64, r: &ChangeMessageVisibility) -> Handled {
        self.logging(|s| {
            s.engine.change_visibility(&mut s.log, now, &r.queue, r.receipt_handle, r.visibility_timeout).map(
                |(receipt_handle, next_visible_time_ms)| {
                    Response::ChangeMessageVisibility(ChangeMessageVisibilityOk {
                        receipt_handle,
                        next_visible_time_ms,
                    })
                },
            )
        })
    }

    /// Testing only (`--fault-drop-one-in N`): the send carrying every Nth
    /// message is acknowledged with made-up ids and not stored.
    pub(in crate::shard) fn fault_drop(&mut self, request: &Request) -> Option<Response> {
        if self.faults.fault_drop_one_in == 0 {
            return None;
        }
        let n = match request {
            Request::SendMessage(_) => 1,
            Request::BatchSendMessage(r) => r.bodies.len() as u64,
            _ => return None,
        };
        let before = self.faults.fault_sends / self.faults.fault_drop_one_in;
        self.faults.fault_sends += n;
        if self.faults.fault_sends / self.faults.fault_drop_one_in == before {
            return None;
        }
        let fake = u64::MAX - self.faults.fault_sends;
        Some(match request {
            Request::SendMessage(_) => Response::SendMessage(SendMessageOk { msg_id: fake }),
            _ => Response::BatchSendMessage(BatchSendMessageOk { msg_ids: (0..n).map(|i| fake - i).collect() }),
        })
    }
}

/// What a ReceiveMessage or BatchReceiveMessage asks for.
pub(in crate::shard) struct Receive<'a> {
    pub queue: &'a str,
    pub max: usize,
    pub polling_wait_seconds: Option<u32>,
}

/// Testing only (`--fault-drop-one-in`): acknowledge every Nth send without storing it.
pub(in crate::shard) struct FaultDrop {
    /// Testing only (`--fault-drop-one-in`): acknowledge every Nth send without storing it.
    pub(in crate::shard) fault_drop_one_in: u64,
    pub(in crate::shard) fault_sends: u64,
}
