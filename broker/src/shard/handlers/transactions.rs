//! Transaction messages (`protocol/src/transactions.rs`): half messages and
//! their outcome (checkers register in `dispatch.rs`, are pushed to from
//! `exchange.rs`).

use cmq_protocol::*;

use super::Handled;
use crate::shard::Shard;

impl Shard {
    pub(in crate::shard) fn send_transaction_message(&mut self, now: u64, r: &SendTransactionMessage) -> Handled {
        self.logging(|s| {
            s.engine
                .send_half(&mut s.log, now, &r.queue, &r.producer_group, &r.body)
                .map(|msg_id| Response::SendTransactionMessage(SendMessageOk { msg_id }))
        })
    }

    pub(in crate::shard) fn end_transaction(&mut self, now: u64, r: &EndTransaction) -> Handled {
        self.logging(|s| {
            s.engine
                .end_transaction(&mut s.log, now, &r.queue, r.msg_id, r.commit)
                .map(|()| Response::EndTransaction(Empty {}))
        })
    }
}
