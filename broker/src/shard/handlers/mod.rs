//! One handler per command domain, mirroring `protocol/src/*.rs`. Each
//! takes a decoded request this shard owns, runs it against the engine, and
//! returns the reply together with what the reply depends on
//! ([`Handled`]); `dispatch.rs` routes requests here and `answer` sends
//! what they return.

mod dead_letter;
mod inspection;
mod keys;
mod limit;
pub(super) mod messages;
mod queue_admin;
mod topics;
mod transactions;

use cmq_protocol::{ErrorCode, Response};

pub(super) use messages::Receive;

use super::mailbox::ReplyTo;
use super::reply::ReplyDep;
use super::Shard;
use crate::engine::{Delivery, EngineError, WaiterTag};

/// What a handler did with its request: the reply and what it depends on.
pub(super) enum Handled {
    /// Answer with this once `ReplyDep` is met.
    Reply(Result<Response, EngineError>, ReplyDep),
    /// A receive's messages (the answer waits for their own durability).
    Deliveries { batch: bool, items: Vec<Delivery> },
    /// A long poll is waiting: it is answered when a message comes, its
    /// wait ends, or it can no longer be served.
    Parked,
    /// DeleteQueue succeeded (answered once `dep` is met); then the long
    /// polls that waited on the queue end with `QUEUE_NOT_FOUND`.
    QueueDeleted { dep: ReplyDep, orphans: Vec<WaiterTag>, message: String },
}

impl Shard {
    /// Runs an engine call whose reply depends on what it logged: durable
    /// up to the log's sync mark if it logged a sync record, written if it
    /// logged only async ones. A call that logged nothing read state.
    pub(super) fn logging(&mut self, call: impl FnOnce(&mut Shard) -> Result<Response, EngineError>) -> Handled {
        let (end_before, sync_before) = (self.log.end(), self.log.sync_mark());
        let result = call(self);
        let dep = if self.log.sync_mark() > sync_before {
            ReplyDep::Logged(self.log.sync_mark())
        } else if self.log.end() > end_before {
            ReplyDep::Logged(0)
        } else {
            ReplyDep::Read
        };
        Handled::Reply(result, dep)
    }

    /// Sends what a handler returned for request `id` (opcode `op`) of `to`.
    pub(super) fn answer(&mut self, to: ReplyTo, op: u16, id: u64, handled: Handled) {
        match handled {
            Handled::Reply(Ok(resp), dep) => self.reply_ok(to, id, &resp, dep),
            Handled::Reply(Err(e), dep) => self.reply_err(to, op, id, e.code, &e.message, dep),
            Handled::Deliveries { batch, items } => self.reply_deliveries(to, id, batch, &items),
            Handled::Parked => {}
            Handled::QueueDeleted { dep, orphans, message } => {
                self.reply_ok(to, id, &Response::DeleteQueue(cmq_protocol::Empty {}), dep);
                self.end_waits(orphans, ErrorCode::QUEUE_NOT_FOUND, &message, ReplyDep::Read);
            }
        }
    }
}
