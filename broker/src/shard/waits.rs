//! Long polls. The engine holds every waiter, each with a [`WaiterTag`]
//! naming the request it answers (`engine/shard_engine.rs`: served when a
//! message comes, expired when its wait ends, handed back when its queue
//! goes); this file turns tags into answers, and ends the waits this
//! replica can no longer serve.

use cmq_protocol::{ErrorCode, Opcode};

use super::mailbox::{ConnRef, ReplyTo};
use super::reply::ReplyDep;
use super::Shard;
use crate::engine::WaiterTag;

/// The tag for request `request_id` of `to` (`batch`: a BatchReceiveMessage).
pub(super) fn tag(to: ReplyTo, request_id: u64, batch: bool) -> WaiterTag {
    WaiterTag { shard: to.shard, conn: (to.conn.token, to.conn.gen), request_id, batch }
}

/// Whom the long poll tagged `t` answers.
fn reply_to(t: &WaiterTag) -> ReplyTo {
    ReplyTo { shard: t.shard, conn: ConnRef { token: t.conn.0, gen: t.conn.1 } }
}

/// The opcode a long poll's answer carries.
fn opcode(t: &WaiterTag) -> u16 {
    let op = if t.batch { Opcode::BatchReceiveMessage } else { Opcode::ReceiveMessage };
    op as u16
}

impl Shard {
    /// Answers long polls that messages arrived for.
    pub(super) fn serve_waiters(&mut self, now: u64) {
        for (_, t, result) in self.engine.serve_waiters(&mut self.log, now) {
            match result {
                Ok(d) => self.reply_deliveries(reply_to(&t), t.request_id, t.batch, &d),
                Err(e) => self.answer_wait(&t, e.code, &e.message, ReplyDep::Read),
            }
        }
    }

    /// Long polls whose wait ended with nothing to deliver.
    pub(super) fn expire_waiters(&mut self, now: u64) {
        for (_, t) in self.engine.expire_waiters(now) {
            self.answer_wait(&t, ErrorCode::NO_MESSAGE, "no message", ReplyDep::Logged(0));
        }
    }

    /// Ends long polls (`waits`, taken from the engine) with an error.
    pub(super) fn end_waits(&mut self, waits: Vec<WaiterTag>, code: ErrorCode, msg: &str, dep: ReplyDep) {
        for t in waits {
            self.answer_wait(&t, code, msg, dep);
        }
    }

    /// A connection went away: its long polls go too.
    pub(super) fn cancel_waits_of(&mut self, gone: ReplyTo) {
        self.engine.cancel_waiters(|t| reply_to(t) == gone);
    }

    fn answer_wait(&mut self, t: &WaiterTag, code: ErrorCode, msg: &str, dep: ReplyDep) {
        self.reply_err(reply_to(t), opcode(t), t.request_id, code, msg, dep);
    }
}
